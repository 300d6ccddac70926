//! The op set of the graph IR.
//!
//! Kept small on purpose (about 25 primitives) so that every `match` over [`Op`] — shape
//! inference, the verifier, autodiff, the interpreter and the backends — is exhaustive: a new
//! op cannot be silently non-differentiable or silently unsupported. Softmax, losses, pooling
//! and normalisation are composed from these by graph builders in the `kiln` crate.
//!
//! Conventions that keep the rules simple:
//! - elementwise ops take operands of *identical* shape and dtype; broadcasting is explicit
//!   (`reshape` + `expand`), so the gradient of broadcasting is the rule of `expand` (a sum);
//! - reductions keep the reduced axes with size 1 (`keepdim=True`); dropping them is a
//!   `reshape`;
//! - ops whose result type is not determined by their operands carry it (`input`, `full`,
//!   `reshape`, `expand`, `cast`), so shape inference is a pure function of op and operands.

use crate::{DType, Literal, TensorType};
use std::sync::Arc;

/// Elementwise functions of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Recip,
    Abs,
    Tanh,
    /// `1 / (1 + exp(-x))`, primitive because its composed gradient overflows to NaN for
    /// large negative `x`.
    Sigmoid,
}

/// Elementwise functions of two operands of equal shape and dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `torch.maximum`: on ties the gradient is split evenly, as PyTorch does.
    Max,
    /// `torch.minimum`: on ties the gradient is split evenly, as PyTorch does.
    Min,
    Pow,
}

/// Comparisons; the result has dtype `bool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Reductions over a set of axes (kept with size 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    /// `amax`: on ties the gradient is split evenly among the maxima, as PyTorch's `amax`.
    Max,
}

/// One axis of a `slice`: elements `start, start+step, ...` below `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SliceAxis {
    pub start: usize,
    pub end: usize,
    pub step: usize,
}

impl SliceAxis {
    pub fn full(dim: usize) -> SliceAxis {
        SliceAxis {
            start: 0,
            end: dim,
            step: 1,
        }
    }
    /// Number of elements selected.
    pub fn len(&self) -> usize {
        if self.end <= self.start {
            0
        } else {
            (self.end - self.start).div_ceil(self.step)
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Attributes of the convolution family, one entry per spatial dimension.
///
/// With input size `i`, kernel `k`, stride `s`, padding `p` and dilation `d`, the forward
/// convolution's output size is `o = (i + 2p - d(k-1) - 1) / s + 1`; output position `o_j`
/// reads input position `o_j*s + k_j*d - p`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvParams {
    pub stride: Vec<usize>,
    pub padding: Vec<usize>,
    pub dilation: Vec<usize>,
    pub groups: usize,
    /// Extra size added on the high side of a transposed convolution's output (PyTorch's
    /// `output_padding`). Zero for `conv` and `conv_weight`.
    pub output_padding: Vec<usize>,
}

impl ConvParams {
    /// Plain parameters for `nd` spatial dimensions: stride 1, no padding, dilation 1.
    pub fn new(nd: usize) -> ConvParams {
        ConvParams {
            stride: vec![1; nd],
            padding: vec![0; nd],
            dilation: vec![1; nd],
            groups: 1,
            output_padding: vec![0; nd],
        }
    }
    pub fn spatial_dims(&self) -> usize {
        self.stride.len()
    }
}

/// An IR operation. Operand order is positional (edge weights in the graph).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A graph input bound at run time (data, targets, frozen tensors).
    Input {
        name: String,
        ty: TensorType,
    },
    /// A trainable parameter bound at run time; autodiff may differentiate with respect to it.
    Param {
        name: String,
        ty: TensorType,
    },
    /// A constant tensor embedded in the graph.
    Const(Arc<Literal>),
    /// A tensor of the given type filled with one value.
    Full {
        value: f64,
        ty: TensorType,
    },
    Unary(UnaryOp),
    Binary(BinaryOp),
    Compare(CmpOp),
    /// `where(cond, a, b)`: `a` where `cond` is true, else `b`.
    Where,
    /// Element type conversion (PyTorch's `.to(dtype)` semantics).
    Cast(DType),
    /// Identity in value; gradients do not flow through it (PyTorch's `.detach()`, JAX's
    /// `stop_gradient`). Autodiff gives its operand no gradient; the interpreter copies.
    Detach,
    /// Reduction over `axes` (sorted, unique), keeping them with size 1.
    Reduce {
        op: ReduceOp,
        axes: Vec<usize>,
    },
    /// Same elements, new shape (row-major order preserved).
    Reshape(Vec<usize>),
    /// Axis `i` of the result is axis `perm[i]` of the operand.
    Permute(Vec<usize>),
    /// Broadcast size-1 axes to the given shape (same rank).
    Expand(Vec<usize>),
    /// Strided sub-range of every axis.
    Slice(Vec<SliceAxis>),
    /// Constant padding: `lo[i]` values before and `hi[i]` after axis `i`.
    Pad {
        lo: Vec<usize>,
        hi: Vec<usize>,
        value: f64,
    },
    /// Concatenation of the operands along an axis.
    Concat(usize),
    /// Batched matrix product `[..., m, k] x [..., k, n] -> [..., m, n]` (equal batch dims).
    MatMul,
    /// N-d convolution (cross-correlation): `x [N, Cin, i...]`, `w [Cout, Cin/g, k...]` ->
    /// `[N, Cout, o...]`. No bias: that is an `add`.
    Conv(ConvParams),
    /// The transpose of `conv` with respect to its input (PyTorch's `conv_transpose`):
    /// `x [N, Cin, i...]`, `w [Cin, Cout/g, k...]` -> `[N, Cout, o...]` with
    /// `o = (i-1)s - 2p + d(k-1) + output_padding + 1`.
    ConvTranspose(ConvParams),
    /// The transpose of `conv` with respect to its weight: `x [N, Cin, i...]`,
    /// `dy [N, Cout, o...]` -> `dw [Cout, Cin/g, kernel...]`. Appears in backward graphs.
    ConvWeight {
        params: ConvParams,
        kernel: Vec<usize>,
    },
}

impl Op {
    /// The op's mnemonic in the text format.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Const(_) => "const",
            Op::Full { .. } => "full",
            Op::Unary(u) => match u {
                UnaryOp::Neg => "neg",
                UnaryOp::Exp => "exp",
                UnaryOp::Log => "log",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Recip => "recip",
                UnaryOp::Abs => "abs",
                UnaryOp::Tanh => "tanh",
                UnaryOp::Sigmoid => "sigmoid",
            },
            Op::Binary(b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Max => "max",
                BinaryOp::Min => "min",
                BinaryOp::Pow => "pow",
            },
            Op::Compare(c) => match c {
                CmpOp::Eq => "eq",
                CmpOp::Ne => "ne",
                CmpOp::Lt => "lt",
                CmpOp::Le => "le",
                CmpOp::Gt => "gt",
                CmpOp::Ge => "ge",
            },
            Op::Where => "where",
            Op::Cast(_) => "cast",
            Op::Detach => "detach",
            Op::Reduce {
                op: ReduceOp::Sum, ..
            } => "reduce_sum",
            Op::Reduce {
                op: ReduceOp::Max, ..
            } => "reduce_max",
            Op::Reshape(_) => "reshape",
            Op::Permute(_) => "permute",
            Op::Expand(_) => "expand",
            Op::Slice(_) => "slice",
            Op::Pad { .. } => "pad",
            Op::Concat(_) => "concat",
            Op::MatMul => "matmul",
            Op::Conv(_) => "conv",
            Op::ConvTranspose(_) => "conv_transpose",
            Op::ConvWeight { .. } => "conv_weight",
        }
    }

    /// Number of operands the op takes, or `None` for variadic (`concat`, at least one).
    pub fn arity(&self) -> Option<usize> {
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Const(_) | Op::Full { .. } => Some(0),
            Op::Unary(_) | Op::Cast(_) | Op::Reduce { .. } | Op::Reshape(_) | Op::Permute(_) => {
                Some(1)
            }
            Op::Expand(_) | Op::Slice(_) | Op::Pad { .. } | Op::Detach => Some(1),
            Op::Binary(_) | Op::Compare(_) | Op::MatMul => Some(2),
            Op::Conv(_) | Op::ConvTranspose(_) | Op::ConvWeight { .. } => Some(2),
            Op::Where => Some(3),
            Op::Concat(_) => None,
        }
    }

    /// Leaves have no operands: inputs, parameters and constants.
    pub fn is_leaf(&self) -> bool {
        self.arity() == Some(0)
    }

    /// Elementwise ops map each output element from the same-index input elements.
    pub fn is_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Cast(_)
        )
    }
}
