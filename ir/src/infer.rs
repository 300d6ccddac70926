//! Shape and dtype inference: the result type of an op from the types of its operands.
//!
//! A pure function, used when a node is created (so a shape error is reported at the user's
//! line) and again by the verifier after every transformation.

use crate::op::{BinaryOp, ConvParams, Op, UnaryOp};
use crate::shape::{fmt_shape, numel};
use crate::{DType, TensorType};

/// The result type of `op` applied to operands of types `args`, or a message saying what is
/// wrong (the caller adds the op, the operand types and the source location).
pub fn infer(op: &Op, args: &[&TensorType]) -> Result<TensorType, String> {
    let ty = infer_unchecked(op, args)?;
    if ty
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .is_none()
    {
        return Err(format!(
            "result shape {} has more elements than memory can address",
            fmt_shape(&ty.shape)
        ));
    }
    Ok(ty)
}

fn infer_unchecked(op: &Op, args: &[&TensorType]) -> Result<TensorType, String> {
    if let Some(n) = op.arity() {
        if args.len() != n {
            return Err(format!("takes {n} operand(s), got {}", args.len()));
        }
    } else if args.is_empty() {
        return Err("takes at least one operand, got none".into());
    }
    match op {
        Op::Input { ty, .. } | Op::Param { ty, .. } | Op::Full { ty, .. } => Ok(ty.clone()),
        Op::Const(lit) => Ok(lit.ty()),
        Op::Unary(u) => {
            let a = args[0];
            let ok = match u {
                UnaryOp::Neg | UnaryOp::Abs => a.dtype.is_numeric(),
                _ => a.dtype.is_float(),
            };
            if !ok {
                return Err(format!("is not defined for dtype {}", a.dtype));
            }
            Ok(a.clone())
        }
        Op::Binary(b) => {
            let (x, y) = (args[0], args[1]);
            same_type(x, y)?;
            let ok = match b {
                BinaryOp::Pow | BinaryOp::Div => x.dtype.is_float(),
                _ => x.dtype.is_numeric(),
            };
            if !ok {
                return Err(format!("is not defined for dtype {}", x.dtype));
            }
            Ok(x.clone())
        }
        Op::Compare(_) => {
            same_type(args[0], args[1])?;
            Ok(TensorType::new(DType::Bool, args[0].shape.clone()))
        }
        Op::Where => {
            let (c, a, b) = (args[0], args[1], args[2]);
            if c.dtype != DType::Bool {
                return Err(format!("condition must be bool, got {}", c.dtype));
            }
            if c.shape != a.shape {
                return Err(format!(
                    "condition shape {} differs from value shape {}",
                    fmt_shape(&c.shape),
                    fmt_shape(&a.shape)
                ));
            }
            same_type(a, b)?;
            Ok(a.clone())
        }
        Op::Cast(d) => Ok(TensorType::new(*d, args[0].shape.clone())),
        Op::Detach => Ok(args[0].clone()),
        Op::Reduce { axes, .. } => {
            let a = args[0];
            if !a.dtype.is_numeric() {
                return Err(format!("is not defined for dtype {}", a.dtype));
            }
            check_axes(axes, a.rank(), true)?;
            let mut shape = a.shape.clone();
            for &ax in axes {
                shape[ax] = 1;
            }
            Ok(TensorType::new(a.dtype, shape))
        }
        Op::Reshape(shape) => {
            let a = args[0];
            if numel(shape) != a.numel() {
                return Err(format!(
                    "cannot reshape {} ({} elements) to {} ({} elements)",
                    fmt_shape(&a.shape),
                    a.numel(),
                    fmt_shape(shape),
                    numel(shape)
                ));
            }
            Ok(TensorType::new(a.dtype, shape.clone()))
        }
        Op::Permute(perm) => {
            let a = args[0];
            if perm.len() != a.rank() {
                return Err(format!(
                    "permutation {:?} has {} entries for rank {}",
                    perm,
                    perm.len(),
                    a.rank()
                ));
            }
            check_axes_perm(perm)?;
            Ok(TensorType::new(
                a.dtype,
                perm.iter().map(|&p| a.shape[p]).collect::<Vec<_>>(),
            ))
        }
        Op::Expand(shape) => {
            let a = args[0];
            if shape.len() != a.rank() {
                return Err(format!(
                    "expand keeps the rank: {} to {}",
                    fmt_shape(&a.shape),
                    fmt_shape(shape)
                ));
            }
            for (i, (&from, &to)) in a.shape.iter().zip(shape).enumerate() {
                if from != to && from != 1 {
                    return Err(format!(
                        "cannot expand {} to {}: axis {i} has size {from}, not 1",
                        fmt_shape(&a.shape),
                        fmt_shape(shape)
                    ));
                }
            }
            Ok(TensorType::new(a.dtype, shape.clone()))
        }
        Op::Slice(axes) => {
            let a = args[0];
            if axes.len() != a.rank() {
                return Err(format!(
                    "slice has {} axes for rank {}",
                    axes.len(),
                    a.rank()
                ));
            }
            let mut shape = Vec::with_capacity(axes.len());
            for (i, (s, &d)) in axes.iter().zip(&a.shape).enumerate() {
                if s.step == 0 || s.start > s.end || s.end > d {
                    return Err(format!(
                        "axis {i}: range {}..{} step {} is not within size {d} (need start <= end <= size, step >= 1)",
                        s.start, s.end, s.step
                    ));
                }
                shape.push(s.len());
            }
            Ok(TensorType::new(a.dtype, shape))
        }
        Op::Pad { lo, hi, .. } => {
            let a = args[0];
            if lo.len() != a.rank() || hi.len() != a.rank() {
                return Err(format!(
                    "pad has {}/{} entries for rank {}",
                    lo.len(),
                    hi.len(),
                    a.rank()
                ));
            }
            let shape = a
                .shape
                .iter()
                .zip(lo.iter().zip(hi))
                .map(|(d, (l, h))| d.checked_add(*l).and_then(|v| v.checked_add(*h)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("padding {lo:?}/{hi:?} overflows"))?;
            Ok(TensorType::new(a.dtype, shape))
        }
        Op::Concat(axis) => {
            let first = args[0];
            if *axis >= first.rank() {
                return Err(format!(
                    "axis {axis} out of range for rank {}",
                    first.rank()
                ));
            }
            let mut shape = first.shape.clone();
            shape[*axis] = 0;
            for (k, a) in args.iter().enumerate() {
                if a.dtype != first.dtype || a.rank() != first.rank() {
                    return Err(format!("operand {k} is {a}, operand 0 is {first}"));
                }
                for i in 0..a.rank() {
                    if i != *axis && a.shape[i] != first.shape[i] {
                        return Err(format!(
                            "operand {k} has shape {}, operand 0 has {}: they may differ only on axis {axis}",
                            fmt_shape(&a.shape),
                            fmt_shape(&first.shape)
                        ));
                    }
                }
                shape[*axis] += a.shape[*axis];
            }
            Ok(TensorType::new(first.dtype, shape))
        }
        Op::MatMul => {
            let (a, b) = (args[0], args[1]);
            if a.dtype != b.dtype || !a.dtype.is_float() {
                return Err(format!(
                    "needs two float operands of one dtype, got {} and {}",
                    a.dtype, b.dtype
                ));
            }
            let r = a.rank();
            if r < 2
                || b.rank() != r
                || a.shape[..r - 2] != b.shape[..r - 2]
                || a.shape[r - 1] != b.shape[r - 2]
            {
                return Err(format!(
                    "cannot multiply {} by {} (need [..., m, k] x [..., k, n] with equal batch dims)",
                    fmt_shape(&a.shape),
                    fmt_shape(&b.shape)
                ));
            }
            let mut shape = a.shape.clone();
            shape[r - 1] = b.shape[r - 1];
            Ok(TensorType::new(a.dtype, shape))
        }
        Op::Conv(p) => {
            let (x, w) = (args[0], args[1]);
            let nd = conv_common(p, x, w, false)?;
            let cin = x.shape[1];
            if w.shape[1] * p.groups != cin {
                return Err(format!(
                    "weight {} expects {} input channels per group x {} groups, input has {cin}",
                    fmt_shape(&w.shape),
                    w.shape[1],
                    p.groups
                ));
            }
            if w.shape[0] % p.groups != 0 {
                return Err(format!(
                    "{} output channels are not divisible by {} groups",
                    w.shape[0], p.groups
                ));
            }
            let mut shape = vec![x.shape[0], w.shape[0]];
            for j in 0..nd {
                shape.push(conv_out_size(x.shape[2 + j], w.shape[2 + j], p, j).ok_or_else(|| {
                    format!(
                        "spatial axis {j}: input size {} with padding {} is smaller than the dilated kernel {}",
                        x.shape[2 + j],
                        p.padding[j],
                        p.dilation[j] * (w.shape[2 + j] - 1) + 1
                    )
                })?);
            }
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::ConvTranspose(p) => {
            let (x, w) = (args[0], args[1]);
            let nd = conv_common(p, x, w, true)?;
            if w.shape[0] != x.shape[1] {
                return Err(format!(
                    "weight {} expects {} input channels, input has {}",
                    fmt_shape(&w.shape),
                    w.shape[0],
                    x.shape[1]
                ));
            }
            if x.shape[1] % p.groups != 0 {
                return Err(format!(
                    "{} input channels are not divisible by {} groups",
                    x.shape[1], p.groups
                ));
            }
            let mut shape = vec![x.shape[0], w.shape[1] * p.groups];
            for j in 0..nd {
                if p.output_padding[j] >= p.stride[j].max(p.dilation[j]) {
                    return Err(format!(
                        "output_padding {} must be smaller than stride {} or dilation {}",
                        p.output_padding[j], p.stride[j], p.dilation[j]
                    ));
                }
                if x.shape[2 + j] == 0 {
                    return Err(format!("spatial axis {j} of the input is empty"));
                }
                let full = (x.shape[2 + j] - 1) * p.stride[j]
                    + p.dilation[j] * (w.shape[2 + j] - 1)
                    + p.output_padding[j]
                    + 1;
                if full < 2 * p.padding[j] + 1 {
                    return Err(format!(
                        "spatial axis {j}: padding {} leaves no output",
                        p.padding[j]
                    ));
                }
                shape.push(full - 2 * p.padding[j]);
            }
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::ConvWeight { params: p, kernel } => {
            let (x, dy) = (args[0], args[1]);
            if x.dtype != dy.dtype || !x.dtype.is_float() {
                return Err(format!(
                    "needs two float operands of one dtype, got {} and {}",
                    x.dtype, dy.dtype
                ));
            }
            let nd = p.spatial_dims();
            check_conv_params_for(p, false)?;
            if kernel.contains(&0) {
                return Err(format!("kernel sizes {kernel:?} must be positive"));
            }
            if x.rank() != nd + 2 || dy.rank() != nd + 2 || kernel.len() != nd {
                return Err(format!(
                    "expects rank-{} input and output gradient and {nd} kernel sizes, got {x}, {dy}, {kernel:?}",
                    nd + 2
                ));
            }
            if x.shape[0] != dy.shape[0]
                || x.shape[1] % p.groups != 0
                || dy.shape[1] % p.groups != 0
            {
                return Err(format!(
                    "batch or channels of {x} and {dy} do not match groups {}",
                    p.groups
                ));
            }
            for (j, &k) in kernel.iter().enumerate() {
                if conv_out_size(x.shape[2 + j], k, p, j) != Some(dy.shape[2 + j]) {
                    return Err(format!(
                        "spatial axis {j}: kernel {k} over input {} gives no output of size {}",
                        x.shape[2 + j],
                        dy.shape[2 + j]
                    ));
                }
            }
            let mut shape = vec![dy.shape[1], x.shape[1] / p.groups];
            shape.extend_from_slice(kernel);
            Ok(TensorType::new(x.dtype, shape))
        }
    }
}

/// Output size of a forward convolution along spatial axis `j`, `None` if the dilated kernel
/// does not fit into the padded input.
pub fn conv_out_size(input: usize, kernel: usize, p: &ConvParams, j: usize) -> Option<usize> {
    let span = p.dilation[j] * (kernel.max(1) - 1) + 1;
    let padded = input + 2 * p.padding[j];
    if kernel == 0 || padded < span {
        return None;
    }
    Some((padded - span) / p.stride[j] + 1)
}

/// Checks the attributes shared by the conv family; `transpose` allows `output_padding`.
fn check_conv_params_for(p: &ConvParams, transpose: bool) -> Result<(), String> {
    check_conv_params(p)?;
    if !transpose && p.output_padding.iter().any(|&v| v != 0) {
        return Err(format!(
            "output_padding {:?} applies only to conv_transpose; it must be zero here",
            p.output_padding
        ));
    }
    Ok(())
}

fn check_conv_params(p: &ConvParams) -> Result<(), String> {
    let nd = p.spatial_dims();
    if nd == 0 {
        return Err("needs at least one spatial dimension".into());
    }
    if p.padding.len() != nd || p.dilation.len() != nd || p.output_padding.len() != nd {
        return Err(format!(
            "stride, padding, dilation and output_padding need {nd} entries each: {:?} {:?} {:?} {:?}",
            p.stride, p.padding, p.dilation, p.output_padding
        ));
    }
    if p.stride.contains(&0) || p.dilation.contains(&0) || p.groups == 0 {
        return Err(format!(
            "stride {:?}, dilation {:?} and groups {} must be positive",
            p.stride, p.dilation, p.groups
        ));
    }
    Ok(())
}

fn conv_common(
    p: &ConvParams,
    x: &TensorType,
    w: &TensorType,
    transpose: bool,
) -> Result<usize, String> {
    check_conv_params_for(p, transpose)?;
    let nd = p.spatial_dims();
    if x.dtype != w.dtype || !x.dtype.is_float() {
        return Err(format!(
            "needs float input and weight of one dtype, got {} and {}",
            x.dtype, w.dtype
        ));
    }
    if x.rank() != nd + 2 || w.rank() != nd + 2 {
        return Err(format!(
            "a {nd}-d convolution needs rank-{} input [N, C, ...] and weight, got {} and {}",
            nd + 2,
            fmt_shape(&x.shape),
            fmt_shape(&w.shape)
        ));
    }
    if w.shape[2..].contains(&0) {
        return Err(format!(
            "kernel {} has an empty spatial axis",
            fmt_shape(&w.shape)
        ));
    }
    Ok(nd)
}

fn same_type(a: &TensorType, b: &TensorType) -> Result<(), String> {
    if a != b {
        return Err(format!(
            "operands must have one type (broadcast explicitly), got {a} and {b}"
        ));
    }
    Ok(())
}

fn check_axes(axes: &[usize], rank: usize, sorted: bool) -> Result<(), String> {
    for (i, &ax) in axes.iter().enumerate() {
        if ax >= rank {
            return Err(format!("axis {ax} out of range for rank {rank}"));
        }
        if sorted && i > 0 && axes[i - 1] >= ax {
            return Err(format!("axes {axes:?} must be sorted and unique"));
        }
    }
    Ok(())
}

fn check_axes_perm(perm: &[usize]) -> Result<(), String> {
    let mut seen = vec![false; perm.len()];
    for &p in perm {
        if p >= perm.len() || seen[p] {
            return Err(format!(
                "{perm:?} is not a permutation of 0..{}",
                perm.len()
            ));
        }
        seen[p] = true;
    }
    Ok(())
}
