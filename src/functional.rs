//! Functional ops in the spirit of `torch.nn.functional`: activations, softmax, linear,
//! convolutions, pooling, batch norm and losses, composed from the IR's primitives.
//!
//! Everything here is a graph builder: the result is a traced tensor whose backward pass comes
//! from the primitives' rules, so no function here has a hand-written gradient.
//! Argument conventions follow PyTorch: per-axis arguments (`stride`, `padding`, ...) take
//! one value for all spatial axes or one per axis; losses take a [`Reduction`].

use crate::autograd::NoGradGuard;
use crate::error::{Error, Result};
use crate::ops::{norm_dim, where_labeled};
use crate::tensor::Tensor;
use kiln_ir::{ConvParams, DType, Op, SliceAxis};

/// How a loss reduces its per-element values (PyTorch's `reduction=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reduction {
    /// Mean over elements (weighted mean for weighted or `ignore_index` losses).
    #[default]
    Mean,
    Sum,
    None,
}

// ----- activations ------------------------------------------------------------------------------

#[track_caller]
pub fn relu(x: &Tensor) -> Tensor {
    x.relu()
}
#[track_caller]
pub fn leaky_relu(x: &Tensor, negative_slope: f64) -> Tensor {
    x.leaky_relu(negative_slope)
}
#[track_caller]
pub fn sigmoid(x: &Tensor) -> Tensor {
    x.sigmoid()
}
#[track_caller]
pub fn tanh(x: &Tensor) -> Tensor {
    x.tanh()
}

/// GELU with the exact erf form approximated by PyTorch's `approximate='tanh'` formula:
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
#[track_caller]
pub fn gelu_tanh(x: &Tensor) -> Tensor {
    let inner = x
        .add(&x.mul(x).mul(x).mul(0.044715))
        .mul((2.0 / std::f64::consts::PI).sqrt());
    x.mul(0.5).mul(&inner.tanh().add(1.0))
}

/// `softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m)` along `dim`, with `m = max_j x_j`
/// (detached: subtracting it changes no value and no gradient, it only prevents overflow).
#[track_caller]
pub fn softmax(x: &Tensor, dim: isize) -> Tensor {
    let d = norm_dim(dim, x.ndim()).unwrap_or_else(|e| panic!("{e}"));
    let m = x.amax(&[d as isize], true).detach();
    let e = x.sub(&m).exp();
    let s = e.sum(&[d as isize], true);
    Tensor::apply(
        Op::Binary(kiln_ir::BinaryOp::Div),
        vec![e.clone(), s.broadcast_to(e.shape())],
        Some("Softmax"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `log_softmax(x)_i = x_i - m - log(sum_j exp(x_j - m))` along `dim` (stable for large `x`).
#[track_caller]
pub fn log_softmax(x: &Tensor, dim: isize) -> Tensor {
    let d = norm_dim(dim, x.ndim()).unwrap_or_else(|e| panic!("{e}"));
    let m = x.amax(&[d as isize], true).detach();
    let z = x.sub(&m);
    let lse = z.exp().sum(&[d as isize], true).log();
    Tensor::apply(
        Op::Binary(kiln_ir::BinaryOp::Sub),
        vec![z.clone(), lse.broadcast_to(z.shape())],
        Some("LogSoftmax"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `x @ w^T + b` (`F.linear`), `w` of shape `[out, in]`.
#[track_caller]
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let y = x.matmul(&weight.t());
    match bias {
        Some(b) => {
            let (a, b) = (y.clone(), b.broadcast_to(y.shape()));
            Tensor::apply(
                Op::Binary(kiln_ir::BinaryOp::Add),
                vec![a, b],
                Some("Addmm"),
            )
            .unwrap_or_else(|e| panic!("{e}"))
        }
        None => y,
    }
}

// ----- convolutions -----------------------------------------------------------------------------

#[track_caller]
fn per_axis(op: &'static str, name: &str, v: &[usize], nd: usize) -> Result<Vec<usize>> {
    match v.len() {
        1 => Ok(vec![v[0]; nd]),
        n if n == nd => Ok(v.to_vec()),
        n => Err(Error::shape(
            op,
            format!("{name} has {n} entries; expected 1 or {nd}"),
        )),
    }
}

/// Adds a batch axis to unbatched input (`[C, ...]`), as PyTorch accepts it.
#[track_caller]
fn batched(op: &'static str, x: &Tensor, nd: usize) -> Result<(Tensor, bool)> {
    if x.ndim() == nd + 2 {
        Ok((x.clone(), false))
    } else if x.ndim() == nd + 1 {
        Ok((x.unsqueeze(0), true))
    } else {
        Err(Error::shape(
            op,
            format!(
                "expected a {}-D or {}-D input, got shape {:?}",
                nd + 1,
                nd + 2,
                x.shape()
            ),
        ))
    }
}

#[track_caller]
fn add_channel_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        None => Ok(y),
        Some(b) => {
            let mut shape = vec![1isize; y.ndim()];
            shape[1] = -1;
            let b = b.try_reshape(&shape)?.try_broadcast_to(y.shape())?;
            Tensor::apply(
                Op::Binary(kiln_ir::BinaryOp::Add),
                vec![y, b],
                Some("Convolution"),
            )
        }
    }
}

/// Options of a convolution: one entry for every spatial axis, or one per axis.
#[derive(Clone, Debug)]
pub struct ConvOpts<'a> {
    pub stride: &'a [usize],
    pub padding: &'a [usize],
    pub dilation: &'a [usize],
    pub groups: usize,
    /// Only for transposed convolutions.
    pub output_padding: &'a [usize],
}

impl Default for ConvOpts<'_> {
    fn default() -> Self {
        ConvOpts {
            stride: &[1],
            padding: &[0],
            dilation: &[1],
            groups: 1,
            output_padding: &[0],
        }
    }
}

#[track_caller]
fn conv_params(op: &'static str, o: &ConvOpts<'_>, nd: usize) -> Result<ConvParams> {
    Ok(ConvParams {
        stride: per_axis(op, "stride", o.stride, nd)?,
        padding: per_axis(op, "padding", o.padding, nd)?,
        dilation: per_axis(op, "dilation", o.dilation, nd)?,
        groups: o.groups,
        output_padding: per_axis(op, "output_padding", o.output_padding, nd)?,
    })
}

/// N-d convolution (cross-correlation) with PyTorch's layouts: input `[N, Cin, *spatial]`
/// (or unbatched `[Cin, *spatial]`), weight `[Cout, Cin/groups, *kernel]`, bias `[Cout]`.
#[track_caller]
pub fn try_conv(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    opts: &ConvOpts<'_>,
) -> Result<Tensor> {
    let Some(nd) = w.ndim().checked_sub(2).filter(|&n| n > 0) else {
        return Err(Error::shape(
            "conv",
            format!(
                "weight must be [Cout, Cin/groups, *kernel], got shape {:?}",
                w.shape()
            ),
        ));
    };
    let (xb, unbatched) = batched("conv", x, nd)?;
    let mut p = conv_params("conv", opts, nd)?;
    p.output_padding = vec![0; nd];
    let y = Tensor::apply(Op::Conv(p), vec![xb, w.clone()], Some("Convolution"))?;
    let y = add_channel_bias(y, bias)?;
    Ok(if unbatched { y.squeeze(0) } else { y })
}

#[track_caller]
fn conv_nd(nd: usize, x: &Tensor, w: &Tensor, b: Option<&Tensor>, o: &ConvOpts<'_>) -> Tensor {
    if w.ndim() != nd + 2 {
        panic!(
            "{}",
            Error::shape(
                "conv",
                format!(
                    "a {nd}-d convolution needs a rank-{} weight, got {:?}",
                    nd + 2,
                    w.shape()
                )
            )
        );
    }
    try_conv(x, w, b, o).unwrap_or_else(|e| panic!("{e}"))
}

#[track_caller]
pub fn conv1d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, o: &ConvOpts<'_>) -> Tensor {
    conv_nd(1, x, w, b, o)
}
#[track_caller]
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, o: &ConvOpts<'_>) -> Tensor {
    conv_nd(2, x, w, b, o)
}
#[track_caller]
pub fn conv3d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, o: &ConvOpts<'_>) -> Tensor {
    conv_nd(3, x, w, b, o)
}

/// N-d transposed convolution (PyTorch's `conv_transpose`): input `[N, Cin, *spatial]`, weight
/// `[Cin, Cout/groups, *kernel]`, bias `[Cout]`; output size
/// `(i-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1`.
#[track_caller]
pub fn try_conv_transpose(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    opts: &ConvOpts<'_>,
) -> Result<Tensor> {
    let Some(nd) = w.ndim().checked_sub(2).filter(|&n| n > 0) else {
        return Err(Error::shape(
            "conv_transpose",
            format!(
                "weight must be [Cin, Cout/groups, *kernel], got {:?}",
                w.shape()
            ),
        ));
    };
    let (xb, unbatched) = batched("conv_transpose", x, nd)?;
    let p = conv_params("conv_transpose", opts, nd)?;
    let y = Tensor::apply(
        Op::ConvTranspose(p),
        vec![xb, w.clone()],
        Some("Convolution"),
    )?;
    let y = add_channel_bias(y, bias)?;
    Ok(if unbatched { y.squeeze(0) } else { y })
}

#[track_caller]
pub fn conv_transpose1d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, o: &ConvOpts<'_>) -> Tensor {
    try_conv_transpose(x, w, b, o).unwrap_or_else(|e| panic!("{e}"))
}
#[track_caller]
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, o: &ConvOpts<'_>) -> Tensor {
    try_conv_transpose(x, w, b, o).unwrap_or_else(|e| panic!("{e}"))
}
#[track_caller]
pub fn conv_transpose3d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, o: &ConvOpts<'_>) -> Tensor {
    try_conv_transpose(x, w, b, o).unwrap_or_else(|e| panic!("{e}"))
}

// ----- pooling ----------------------------------------------------------------------------------

/// Options of a pooling op; `stride` empty means "equal to the kernel" (PyTorch's default).
#[derive(Clone, Debug)]
pub struct PoolOpts<'a> {
    pub kernel_size: &'a [usize],
    pub stride: &'a [usize],
    pub padding: &'a [usize],
    pub dilation: &'a [usize],
}

impl<'a> PoolOpts<'a> {
    /// Kernel `k`, stride `k`, no padding.
    pub fn kernel(kernel_size: &'a [usize]) -> PoolOpts<'a> {
        PoolOpts {
            kernel_size,
            stride: &[],
            padding: &[0],
            dilation: &[1],
        }
    }
}

/// The strided window slices of a pooling op: one tensor of the output's shape per kernel
/// offset, in row-major kernel order.
#[track_caller]
fn windows(
    op: &'static str,
    x: &Tensor,
    nd: usize,
    o: &PoolOpts<'_>,
    pad_value: f64,
) -> Result<Vec<Tensor>> {
    let (x, _) = batched(op, x, nd)?;
    let k = per_axis(op, "kernel_size", o.kernel_size, nd)?;
    let s = if o.stride.is_empty() {
        k.clone()
    } else {
        per_axis(op, "stride", o.stride, nd)?
    };
    let p = per_axis(op, "padding", o.padding, nd)?;
    let d = per_axis(op, "dilation", o.dilation, nd)?;
    for j in 0..nd {
        if k[j] == 0 || s[j] == 0 || d[j] == 0 {
            return Err(Error::shape(
                op,
                "kernel_size, stride and dilation must be positive",
            ));
        }
        if 2 * p[j] > k[j] {
            return Err(Error::shape(
                op,
                format!(
                    "padding {} must be at most half the kernel size {}",
                    p[j], k[j]
                ),
            ));
        }
    }
    let r = x.ndim();
    let mut lo = vec![0usize; r];
    lo[2..].copy_from_slice(&p);
    let xp = if p.iter().any(|&v| v > 0) {
        Tensor::apply(
            Op::Pad {
                lo: lo.clone(),
                hi: lo.clone(),
                value: pad_value,
            },
            vec![x.clone()],
            None,
        )?
    } else {
        x.clone()
    };
    let mut out_sz = Vec::with_capacity(nd);
    for j in 0..nd {
        let span = d[j] * (k[j] - 1) + 1;
        let padded = xp.shape()[2 + j];
        if padded < span {
            return Err(Error::shape(
                op,
                format!(
                    "input {:?} with padding {:?} is smaller than the kernel {:?}",
                    x.shape(),
                    p,
                    k
                ),
            ));
        }
        out_sz.push((padded - span) / s[j] + 1);
    }
    let mut result = Vec::new();
    let total: usize = k.iter().product();
    for flat in 0..total {
        let mut rem = flat;
        let mut axes: Vec<SliceAxis> = xp.shape().iter().map(|&n| SliceAxis::full(n)).collect();
        for j in (0..nd).rev() {
            let kj = rem % k[j];
            rem /= k[j];
            let start = kj * d[j];
            axes[2 + j] = SliceAxis {
                start,
                end: start + (out_sz[j] - 1) * s[j] + 1,
                step: s[j],
            };
        }
        result.push(Tensor::apply(Op::Slice(axes), vec![xp.clone()], None)?);
    }
    Ok(result)
}

/// Max pooling over `nd` spatial axes. Within a window the first maximum (in row-major kernel
/// order) receives the gradient, and NaN wins, as in PyTorch's kernels.
#[track_caller]
pub fn try_max_pool(x: &Tensor, nd: usize, o: &PoolOpts<'_>) -> Result<Tensor> {
    let unbatched = x.ndim() == nd + 1;
    let ws = windows("max_pool", x, nd, o, f64::NEG_INFINITY)?;
    // The position in the window of the element that wins, computed once without gradient:
    // `idx_j = where(w_j > m || isnan(w_j), j, idx_{j-1})`. The output then selects by it,
    // `y = where(idx == 0, w_0, where(idx == 1, w_1, ...))`, so the gradient of window slot
    // `j` is `where(idx == j, dy, 0)`: the backward pass reads one small index tensor instead
    // of re-running the comparison chain for every input element (and the compiler
    // materialises `idx` once, shared by the forward and backward kernels).
    let idx = {
        let _g = NoGradGuard::new();
        let mut m = ws[0].detach();
        let mut idx = Tensor::constant(0.0, DType::F32, Vec::new());
        for (j, w) in ws.iter().enumerate().skip(1) {
            let w = w.detach();
            let slot = Tensor::constant(j as f64, DType::F32, Vec::new());
            let take = w.gt(&m);
            m = where_labeled(&take, &w, &m, "MaxPool");
            idx = where_labeled(&take, &slot, &idx, "MaxPool");
            let nan = w.ne(&w);
            m = where_labeled(&nan, &w, &m, "MaxPool");
            idx = where_labeled(&nan, &slot, &idx, "MaxPool");
        }
        idx
    };
    let last = ws.len() - 1;
    let mut y = ws[last].clone();
    for j in (0..last).rev() {
        y = where_labeled(&idx.eq(j as f64), &ws[j], &y, "MaxPool");
    }
    Ok(if unbatched { y.squeeze(0) } else { y })
}

#[track_caller]
pub fn max_pool1d(x: &Tensor, o: &PoolOpts<'_>) -> Tensor {
    try_max_pool(x, 1, o).unwrap_or_else(|e| panic!("{e}"))
}
#[track_caller]
pub fn max_pool2d(x: &Tensor, o: &PoolOpts<'_>) -> Tensor {
    try_max_pool(x, 2, o).unwrap_or_else(|e| panic!("{e}"))
}
#[track_caller]
pub fn max_pool3d(x: &Tensor, o: &PoolOpts<'_>) -> Tensor {
    try_max_pool(x, 3, o).unwrap_or_else(|e| panic!("{e}"))
}

/// Average pooling; zero padding counts in the divisor (`count_include_pad=True`, PyTorch's
/// default), so the divisor is the kernel volume.
#[track_caller]
pub fn try_avg_pool(x: &Tensor, nd: usize, o: &PoolOpts<'_>) -> Result<Tensor> {
    let unbatched = x.ndim() == nd + 1;
    let ws = windows("avg_pool", x, nd, o, 0.0)?;
    let n = ws.len() as f64;
    let mut s = ws[0].clone();
    for w in &ws[1..] {
        s = s.add(w);
    }
    let y = s.mul(1.0 / n);
    Ok(if unbatched { y.squeeze(0) } else { y })
}

#[track_caller]
pub fn avg_pool1d(x: &Tensor, o: &PoolOpts<'_>) -> Tensor {
    try_avg_pool(x, 1, o).unwrap_or_else(|e| panic!("{e}"))
}
#[track_caller]
pub fn avg_pool2d(x: &Tensor, o: &PoolOpts<'_>) -> Tensor {
    try_avg_pool(x, 2, o).unwrap_or_else(|e| panic!("{e}"))
}
#[track_caller]
pub fn avg_pool3d(x: &Tensor, o: &PoolOpts<'_>) -> Tensor {
    try_avg_pool(x, 3, o).unwrap_or_else(|e| panic!("{e}"))
}

// ----- normalisation ----------------------------------------------------------------------------

/// Batch normalisation over `[N, C, ...]` (`F.batch_norm`).
///
/// Training: normalises with the batch's mean and biased variance over all axes but 1, and
/// updates the running statistics in place (rebinding the handles, lazily):
/// `running = (1 - momentum) * running + momentum * stat`, with the *unbiased* variance, as
/// PyTorch. Evaluation: normalises with the running statistics.
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn batch_norm(
    x: &Tensor,
    running_mean: Option<&mut Tensor>,
    running_var: Option<&mut Tensor>,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    training: bool,
    momentum: f64,
    eps: f64,
) -> Tensor {
    assert!(
        x.ndim() >= 2,
        "batch_norm: expected input [N, C, ...], got shape {:?}",
        x.shape()
    );
    let c = x.shape()[1];
    let mut cshape = vec![1isize; x.ndim()];
    cshape[1] = c as isize;
    let axes: Vec<isize> = (0..x.ndim() as isize).filter(|&a| a != 1).collect();
    let (mean, var) = if training {
        let mean = x.mean(&axes, true);
        let d = x.sub(&mean);
        let var = d.mul(&d).mean(&axes, true);
        let n = (x.numel() / c) as f64;
        assert!(
            n > 1.0,
            "batch_norm: expected more than 1 value per channel when training, got input {:?}",
            x.shape()
        );
        let _g = NoGradGuard::new();
        if let Some(rm) = running_mean {
            *rm = rm
                .mul(1.0 - momentum)
                .add(&mean.reshape(&[c as isize]).mul(momentum));
        }
        if let Some(rv) = running_var {
            *rv = rv
                .mul(1.0 - momentum)
                .add(&var.reshape(&[c as isize]).mul(momentum * n / (n - 1.0)));
        }
        (mean, var)
    } else {
        let rm = running_mean.expect("batch_norm in eval mode needs running_mean");
        let rv = running_var.expect("batch_norm in eval mode needs running_var");
        (rm.reshape(&cshape), rv.reshape(&cshape))
    };
    let mut y = x.sub(&mean).div(&var.add(eps).sqrt());
    if let Some(w) = weight {
        y = y.mul(&w.reshape(&cshape));
    }
    if let Some(b) = bias {
        let b = b.reshape(&cshape).broadcast_to(y.shape());
        y = Tensor::apply(
            Op::Binary(kiln_ir::BinaryOp::Add),
            vec![y, b],
            Some("NativeBatchNorm"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    y
}

// ----- losses -----------------------------------------------------------------------------------

#[track_caller]
fn reduce(per: Tensor, reduction: Reduction, label: &'static str) -> Tensor {
    match reduction {
        Reduction::None => per,
        Reduction::Sum => {
            let s = per.sum_all();
            Tensor::apply(Op::Reshape(vec![]), vec![s], Some(label))
                .unwrap_or_else(|e| panic!("{e}"))
        }
        Reduction::Mean => {
            let s = per.sum_all();
            let k = s.filled(1.0 / per.numel().max(1) as f64);
            Tensor::apply(Op::Binary(kiln_ir::BinaryOp::Mul), vec![s, k], Some(label))
                .unwrap_or_else(|e| panic!("{e}"))
        }
    }
}

#[track_caller]
fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!(
                "input {:?} and target {:?} must have one shape",
                a.shape(),
                b.shape()
            ),
        ));
    }
    Ok(())
}

/// Mean squared error `mean((x - y)^2)`.
#[track_caller]
pub fn mse_loss(input: &Tensor, target: &Tensor, reduction: Reduction) -> Tensor {
    same_shape("mse_loss", input, target).unwrap_or_else(|e| panic!("{e}"));
    let d = input.sub(target);
    reduce(d.mul(&d), reduction, "MseLoss")
}

/// Mean absolute error `mean(|x - y|)`; the gradient at `x == y` is 0, as PyTorch's `sign`.
#[track_caller]
pub fn l1_loss(input: &Tensor, target: &Tensor, reduction: Reduction) -> Tensor {
    same_shape("l1_loss", input, target).unwrap_or_else(|e| panic!("{e}"));
    reduce(input.sub(target).abs(), reduction, "L1Loss")
}

/// Checks class-index targets when their values are known: PyTorch fails on a target outside
/// `[0, C)` that is not `ignore_index`, and so do we, naming the value.
#[track_caller]
fn check_targets(
    op: &'static str,
    target: &Tensor,
    classes: usize,
    ignore_index: i64,
) -> Result<()> {
    if target.dtype() != DType::I64 {
        return Err(Error::DType(format!(
            "{op}: class-index targets must be i64, got {}",
            target.dtype()
        )));
    }
    if target.is_realized() {
        for v in target.to_vec::<i64>() {
            if v != ignore_index && (v < 0 || v as usize >= classes) {
                return Err(Error::shape(
                    op,
                    format!("target {v} is out of bounds for {classes} classes"),
                ));
            }
        }
    }
    Ok(())
}

/// Negative log-likelihood of class-index targets over `[N, C, d1, ...]` log-probabilities
/// (`F.nll_loss`), with optional class weights and `ignore_index`.
///
/// `loss_i = -w[y_i] * logp[i, y_i]` for targets `y_i != ignore_index`; `Mean` divides the sum
/// by `sum_i w[y_i]` over the non-ignored targets (PyTorch's weighted mean).
#[track_caller]
pub fn try_nll_loss(
    logp: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    ignore_index: i64,
    reduction: Reduction,
) -> Result<Tensor> {
    let (logp, target) = if logp.ndim() == 1 {
        (logp.unsqueeze(0), target.unsqueeze(0))
    } else {
        (logp.clone(), target.clone())
    };
    let c = logp.shape()[1];
    let mut want = logp.shape().to_vec();
    want.remove(1);
    if target.shape() != want.as_slice() {
        return Err(Error::shape(
            "nll_loss",
            format!(
                "input {:?} needs target of shape {:?}, got {:?}",
                logp.shape(),
                want,
                target.shape()
            ),
        ));
    }
    check_targets("nll_loss", &target, c, ignore_index)?;
    let mut cshape = vec![1isize; logp.ndim()];
    cshape[1] = c as isize;
    let classes = Tensor::arange(0.0, c as f64, 1.0, DType::I64).reshape(&cshape);
    let onehot = target.unsqueeze(1).eq(&classes).to_dtype(logp.dtype());
    let picked = logp.mul(&onehot).sum(&[1], false).neg();
    let valid = target.ne(ignore_index).to_dtype(logp.dtype());
    let w = match weight {
        Some(w) => onehot.mul(&w.reshape(&cshape)).sum(&[1], false).mul(&valid),
        None => valid,
    };
    let per = picked.mul(&w);
    Ok(match reduction {
        Reduction::Mean => {
            let l = per.sum_all().div(&w.sum_all());
            Tensor::apply(Op::Reshape(vec![]), vec![l], Some("NllLoss"))?
        }
        r => reduce(per, r, "NllLoss"),
    })
}

#[track_caller]
pub fn nll_loss(
    logp: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    ignore_index: i64,
    reduction: Reduction,
) -> Tensor {
    try_nll_loss(logp, target, weight, ignore_index, reduction).unwrap_or_else(|e| panic!("{e}"))
}

/// Cross-entropy of logits `[N, C, d1, ...]` and class-index targets `[N, d1, ...]`
/// (`F.cross_entropy`): `nll_loss(log_softmax(x, 1), y)`.
#[track_caller]
pub fn cross_entropy(
    input: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    ignore_index: i64,
    reduction: Reduction,
) -> Tensor {
    let dim = if input.ndim() == 1 { 0 } else { 1 };
    nll_loss(
        &log_softmax(input, dim),
        target,
        weight,
        ignore_index,
        reduction,
    )
}

/// Binary cross-entropy on logits, in the stable form
/// `l = (1 - y) x + (1 + (p - 1) y) (log(1 + exp(-|x|)) + max(-x, 0))` with `p` the optional
/// positive-class weight (`F.binary_cross_entropy_with_logits`).
#[track_caller]
pub fn binary_cross_entropy_with_logits(
    input: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    pos_weight: Option<&Tensor>,
    reduction: Reduction,
) -> Tensor {
    same_shape("binary_cross_entropy_with_logits", input, target).unwrap_or_else(|e| panic!("{e}"));
    let softplus_neg = input
        .abs()
        .neg()
        .exp()
        .add(1.0)
        .log()
        .add(&input.neg().relu());
    let mut l = match pos_weight {
        Some(p) => {
            let lw = target.mul(&p.sub(1.0)).add(1.0);
            target.neg().add(1.0).mul(input).add(&lw.mul(&softplus_neg))
        }
        None => target.neg().add(1.0).mul(input).add(&softplus_neg),
    };
    if let Some(w) = weight {
        l = l.mul(w);
    }
    reduce(l, reduction, "BinaryCrossEntropyWithLogits")
}

/// Binary cross-entropy of probabilities, with PyTorch's clamp of the logs at -100.
#[track_caller]
pub fn binary_cross_entropy(
    input: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    reduction: Reduction,
) -> Tensor {
    same_shape("binary_cross_entropy", input, target).unwrap_or_else(|e| panic!("{e}"));
    let lp = input.log().clamp(Some(-100.0), None);
    let lq = input.neg().add(1.0).log().clamp(Some(-100.0), None);
    let mut l = target.mul(&lp).add(&target.neg().add(1.0).mul(&lq)).neg();
    if let Some(w) = weight {
        l = l.mul(w);
    }
    reduce(l, reduction, "BinaryCrossEntropy")
}

/// Constant padding in PyTorch's order (`F.pad(x, pad, value=...)`).
#[track_caller]
pub fn pad(x: &Tensor, pad: &[isize], value: f64) -> Tensor {
    x.pad(pad, value)
}

// ----- nn support: erf, exact GELU, dropout, one-hot, soft Dice ----------------------------------

/// `erfc(z)` for `z >= 0` by the Chebyshev-fitted formula of Numerical Recipes (`erfcc`):
/// `t = 1 / (1 + z/2)`, `erfc(z) = t exp(-z^2 + P(t))` with a degree-9 polynomial `P`;
/// relative error below 1.2e-7 for every `z >= 0`, so the tail keeps its relative accuracy.
#[track_caller]
fn erfc_nonneg(z: &Tensor) -> Tensor {
    const C: [f64; 10] = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ];
    let t = z.mul(0.5).add(1.0).reciprocal();
    let mut p = t.mul(C[9]);
    for &c in C[1..9].iter().rev() {
        p = p.add(c).mul(&t);
    }
    let p = p.add(C[0]);
    t.mul(&z.mul(z).neg().add(&p).exp())
}

/// The error function `erf(x) = 2/sqrt(pi) * int_0^x exp(-t^2) dt`, composed from primitives
/// (the IR has no `erf`): `sign(x) (1 - erfc(|x|))`, with `erfc` from the Chebyshev fit of
/// Numerical Recipes (`erfcc`: `t = 1 / (1 + |x|/2)`, `erfc = t exp(-x^2 + P(t))`, `P` of
/// degree 9, relative error below 1.2e-7). The absolute error of `erf` is below 1.2e-7 (about
/// one f32 ulp of values near 1); the gradient is the approximation's own, within about 1e-6
/// of `2/sqrt(pi) exp(-x^2)`.
#[track_caller]
pub fn erf(x: &Tensor) -> Tensor {
    let pos = x.ge(0.0);
    // |x| as a `where`, not `abs`, so that the gradient at 0 is taken from the x >= 0 side.
    let z = where_labeled(&pos, x, &x.neg(), "Erf");
    let e = erfc_nonneg(&z);
    where_labeled(&pos, &e.neg().add(1.0), &e.sub(1.0), "Erf")
}

/// GELU, PyTorch's default exact form (`F.gelu(x)`, `approximate='none'`):
/// `x Phi(x) = x/2 (1 + erf(x / sqrt 2)) = x/2 erfc(-x / sqrt 2)`.
///
/// Computed through `erfc` so that the negative tail (where `1 + erf` would cancel) keeps its
/// relative accuracy; the error of [`erf`]'s approximation gives an absolute error below
/// `6e-8 |x|`. [`gelu_tanh`] is the `approximate='tanh'` form.
#[track_caller]
pub fn gelu(x: &Tensor) -> Tensor {
    let pos = x.ge(0.0);
    let z = where_labeled(&pos, x, &x.neg(), "Gelu").mul(std::f64::consts::FRAC_1_SQRT_2);
    let e = erfc_nonneg(&z);
    // erfc(-x/sqrt2) = 2 - erfc(|x|/sqrt2) for x >= 0, erfc(|x|/sqrt2) for x < 0.
    let c = where_labeled(&pos, &e.neg().add(2.0), &e, "Gelu");
    x.mul(0.5).mul(&c)
}

/// Dropout (`F.dropout(x, p, training)`): in training mode each element is zeroed with
/// probability `p` and the others scaled by `1 / (1 - p)` (all zeroed for `p = 1`); otherwise,
/// and for `p = 0`, the identity. The mask is drawn from `generator` (one uniform per element,
/// kept when `u >= p`) and enters the graph as a constant, so the gradient is the same mask.
/// Because the mask is host data, training-mode dropout inside a compiled step is an error
/// (the step would replay one mask forever) until the IR has a random-number op.
#[track_caller]
pub fn try_dropout(
    x: &Tensor,
    p: f64,
    training: bool,
    generator: &mut crate::random::Generator,
) -> Result<Tensor> {
    crate::nn::dropout::check_p(p)?;
    if !training || p == 0.0 {
        return Ok(x.clone());
    }
    if !x.dtype().is_float() {
        return Err(Error::DType(format!(
            "dropout: expected a float input, got {}",
            x.dtype()
        )));
    }
    if crate::compile::is_tracing() {
        // The mask is host data: a traced step would replay the trace-time mask at every run.
        return Err(Error::Autograd(
            "dropout in training mode inside a compiled step: the IR has no random-number op yet, so the mask would be frozen at trace time; run this step eagerly, or trace it in eval mode or with p = 0".into(),
        ));
    }
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    let mask: Vec<f64> = (0..x.numel())
        .map(|_| {
            if generator.uniform_f32() as f64 >= p {
                scale
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_literal(kiln_ir::Literal::from_f64(
        x.shape().to_vec(),
        x.dtype(),
        &mask,
    ));
    x.try_mul(&mask)
}

#[track_caller]
pub fn dropout(
    x: &Tensor,
    p: f64,
    training: bool,
    generator: &mut crate::random::Generator,
) -> Tensor {
    try_dropout(x, p, training, generator).unwrap_or_else(|e| panic!("{e}"))
}

/// One-hot encoding of i64 class indices (`F.one_hot(target, num_classes)`): a new last axis
/// of size `num_classes`, 1 at the index, as i64. An index outside `[0, num_classes)` is an
/// error naming it (checked when the indices are already realised).
#[track_caller]
pub fn one_hot(target: &Tensor, num_classes: usize) -> Result<Tensor> {
    check_targets("one_hot", target, num_classes, i64::MIN)?;
    let classes = Tensor::arange(0.0, num_classes as f64, 1.0, DType::I64);
    Ok(target.unsqueeze(-1).eq(&classes).to_dtype(DType::I64))
}

/// Soft Dice loss of probabilities `input` `[N, C, *spatial]` against a target of the same
/// shape (one-hot or soft labels, e.g. `one_hot(y, C)` moved to axis 1):
///
/// `loss[n, c] = 1 - (2 sum_s p t + smooth) / (sum_s p + sum_s t + smooth)`,
///
/// sums over the spatial axes; `smooth` (e.g. 1e-5) keeps an empty class finite (its loss is
/// 0 when both sums are 0). `Mean` averages over `N` and `C`, `None` returns `[N, C]`.
#[track_caller]
pub fn try_soft_dice_loss(
    input: &Tensor,
    target: &Tensor,
    smooth: f64,
    reduction: Reduction,
) -> Result<Tensor> {
    same_shape("soft_dice_loss", input, target)?;
    if input.ndim() < 2 {
        return Err(Error::shape(
            "soft_dice_loss",
            format!("expected input [N, C, ...], got shape {:?}", input.shape()),
        ));
    }
    let t = target.try_to_dtype(input.dtype())?;
    let axes: Vec<isize> = (2..input.ndim() as isize).collect();
    let sum = |v: &Tensor| {
        if axes.is_empty() {
            v.clone()
        } else {
            v.sum(&axes, false)
        }
    };
    let inter = sum(&input.mul(&t));
    let denom = sum(input).add(&sum(&t));
    let dice = inter.mul(2.0).add(smooth).div(&denom.add(smooth));
    Ok(reduce(dice.neg().add(1.0), reduction, "SoftDiceLoss"))
}

#[track_caller]
pub fn soft_dice_loss(
    input: &Tensor,
    target: &Tensor,
    smooth: f64,
    reduction: Reduction,
) -> Tensor {
    try_soft_dice_loss(input, target, smooth, reduction).unwrap_or_else(|e| panic!("{e}"))
}
