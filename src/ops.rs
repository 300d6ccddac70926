//! Tensor ops as methods, with PyTorch's broadcasting, type promotion and argument
//! conventions (negative dims, `-1` in shapes, `pad` in last-dimension-first order).
//!
//! Every method that can fail on user input has a `try_` form returning [`Result`]; the plain
//! form panics with the same message, which names the op, the shapes and the caller's line
//! (`#[track_caller]` throughout, so the line is the user's, not kiln's).

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use kiln_ir::infer::infer;
use kiln_ir::shape::{broadcast_shapes, fmt_shape};
use kiln_ir::{BinaryOp, CmpOp, DType, Loc, Op, ReduceOp, SliceAxis, TensorType, UnaryOp};

/// The second operand of a binary op: a tensor or a Python-style scalar.
///
/// As in PyTorch, the kind of a scalar matters, not its value: a float scalar (`2.0`) makes an
/// integer or bool tensor's result f32, an integer scalar (`2`) keeps an integer tensor's dtype
/// (and makes a bool tensor's result i64).
#[derive(Clone, Copy)]
pub enum Operand<'a> {
    Tensor(&'a Tensor),
    /// A float scalar (Rust `f64`/`f32`, Python `float`).
    Scalar(f64),
    /// An integer scalar (Rust `i64`/`i32`/`usize`, Python `int`).
    Int(i64),
}

impl<'a> From<&'a Tensor> for Operand<'a> {
    fn from(t: &'a Tensor) -> Self {
        Operand::Tensor(t)
    }
}
macro_rules! scalar_operand {
    ($variant:ident as $as:ty: $($t:ty),*) => {$(
        impl From<$t> for Operand<'_> {
            fn from(v: $t) -> Self {
                Operand::$variant(v as $as)
            }
        }
    )*};
}
scalar_operand!(Scalar as f64: f64, f32);
scalar_operand!(Int as i64: i64, i32, usize);

/// Normalises a possibly negative axis. As in PyTorch, a 0-d tensor accepts `0` and `-1` (both
/// give 0), as if it had one axis: callers must not index its (empty) shape with the result.
#[track_caller]
pub fn norm_dim(dim: isize, rank: usize) -> Result<usize> {
    let r = rank.max(1) as isize;
    let d = if dim < 0 { dim + r } else { dim };
    if d < 0 || d >= r {
        return Err(Error::Shape {
            op: "dim",
            msg: format!("dimension {dim} is out of range for a tensor of rank {rank}"),
            loc: Loc::caller(),
        });
    }
    Ok(d as usize)
}

#[track_caller]
fn dims_of(op: &'static str, dims: &[isize], rank: usize) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(dims.len());
    for &d in dims {
        // No closures around `Error::shape` here and below: a closure is not `track_caller`,
        // so the error would name kiln's line instead of the user's.
        let Ok(n) = norm_dim(d, rank) else {
            return Err(Error::shape(
                op,
                format!("dimension {d} is out of range for a tensor of rank {rank}"),
            ));
        };
        if out.contains(&n) {
            return Err(Error::shape(
                op,
                format!("dimension {d} is repeated in {dims:?}"),
            ));
        }
        out.push(n);
    }
    out.sort_unstable();
    if rank == 0 {
        // Reducing a 0-d tensor over its "axis" reduces nothing (`torch.tensor(5.).sum(0)`).
        out.clear();
    }
    Ok(out)
}

/// PyTorch's type categories: bool < integer < floating point.
pub(crate) fn category(d: DType) -> u8 {
    match d {
        DType::Bool => 0,
        DType::I64 => 1,
        DType::F32 | DType::F64 => 2,
    }
}

/// The result dtype of mixing two dtypes, PyTorch's promotion on this small lattice: the higher
/// category wins (`i64 + f32` is f32, `bool + i64` is i64), and within one the wider type.
pub(crate) fn promote(a: DType, b: DType) -> DType {
    match category(a).cmp(&category(b)) {
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Equal if a == b => a,
        // The only two distinct types of one category.
        std::cmp::Ordering::Equal => DType::F64,
    }
}

/// PyTorch's `result_type` of two tensors: a 0-d tensor decides only when its category is higher
/// than the other operand's (`ones(2) + tensor(1., dtype=float64)` stays f32).
fn promote_tensors(a: &Tensor, b: &Tensor) -> DType {
    let (da, db) = (a.dtype(), b.dtype());
    match (a.ndim() == 0, b.ndim() == 0) {
        (true, false) if category(da) <= category(db) => db,
        (false, true) if category(db) <= category(da) => da,
        _ => promote(da, db),
    }
}

/// Elementwise functions of one tensor: `x.exp()` etc.; an unsupported dtype panics with the op,
/// the type and the caller's line (integers are promoted to f32 first, except for neg and abs).
macro_rules! unary_methods {
    ($($name:ident => $op:ident, $label:literal;)*) => {$(
        #[doc = concat!("Elementwise `", stringify!($name), "`.")]
        #[track_caller]
        pub fn $name(&self) -> Tensor {
            self.unary_op(UnaryOp::$op, $label).unwrap_or_else(|e| panic!("{e}"))
        }
    )*};
}

/// Binary arithmetic with a tensor or a scalar, broadcasting and promoting: a `try_` form
/// returning the error, and a panicking form that names the caller's line.
macro_rules! binary_methods {
    ($($(#[$doc:meta])* $try_name:ident, $name:ident => $op:ident, $label:literal;)*) => {$(
        $(#[$doc])*
        #[track_caller]
        pub fn $try_name<'a>(&self, o: impl Into<Operand<'a>>) -> Result<Tensor> {
            self.binary_op(o.into(), BinaryOp::$op, $label)
        }
        $(#[$doc])*
        #[track_caller]
        pub fn $name<'a>(&self, o: impl Into<Operand<'a>>) -> Tensor {
            self.$try_name(o).unwrap_or_else(|e| panic!("{e}"))
        }
    )*};
}

/// Comparisons with a tensor or a scalar, broadcasting; the result is a bool tensor.
macro_rules! compare_methods {
    ($($name:ident => $op:ident;)*) => {$(
        #[doc = concat!("Elementwise `", stringify!($name), "` comparison (bool result).")]
        #[track_caller]
        pub fn $name<'a>(&self, o: impl Into<Operand<'a>>) -> Tensor {
            self.compare(o.into(), CmpOp::$op).unwrap_or_else(|e| panic!("{e}"))
        }
    )*};
}

impl Tensor {
    /// Records `op` over `inputs`, inferring the result type; a type error names the op, the
    /// operand types and the caller's line.
    #[track_caller]
    pub(crate) fn apply(
        op: Op,
        inputs: Vec<Tensor>,
        label: Option<&'static str>,
    ) -> Result<Tensor> {
        let loc = Loc::caller();
        let tys: Vec<&TensorType> = inputs.iter().map(|t| t.ty()).collect();
        let ty = infer(&op, &tys).map_err(|msg| Error::Shape {
            op: op.name(),
            msg: format!(
                "{msg} (operands: {})",
                tys.iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            loc: loc.clone(),
        })?;
        Ok(Tensor::from_op(op, inputs, ty, loc, label))
    }

    /// A lazily created constant of this tensor's dtype and shape.
    #[track_caller]
    pub(crate) fn filled(&self, value: f64) -> Tensor {
        let ty = self.ty().clone();
        Tensor::from_op(
            Op::Full {
                value,
                ty: ty.clone(),
            },
            vec![],
            ty,
            Loc::caller(),
            None,
        )
    }

    /// A lazily created constant of the given type.
    #[track_caller]
    pub(crate) fn constant(value: f64, dtype: DType, shape: Vec<usize>) -> Tensor {
        let ty = TensorType::new(dtype, shape);
        Tensor::from_op(
            Op::Full {
                value,
                ty: ty.clone(),
            },
            vec![],
            ty,
            Loc::caller(),
            None,
        )
    }

    /// Both operands of `op_name`, promoted to one dtype (a float one if `want_float`) and
    /// broadcast to one shape.
    #[track_caller]
    fn operand(
        &self,
        other: Operand<'_>,
        want_float: bool,
        op_name: &'static str,
    ) -> Result<(Tensor, Tensor)> {
        match other {
            Operand::Tensor(o) => {
                let mut dt = promote_tensors(self, o);
                if want_float && !dt.is_float() {
                    dt = DType::F32;
                }
                let (a, b) = (self.try_to_dtype(dt)?, o.try_to_dtype(dt)?);
                let Some(shape) = broadcast_shapes(a.shape(), b.shape()) else {
                    return Err(Error::shape(
                        op_name,
                        format!(
                            "shapes {} and {} cannot be broadcast together",
                            fmt_shape(a.shape()),
                            fmt_shape(b.shape())
                        ),
                    ));
                };
                Ok((a.try_broadcast_to(&shape)?, b.try_broadcast_to(&shape)?))
            }
            Operand::Scalar(v) => {
                let dt = if self.dtype().is_float() {
                    self.dtype()
                } else {
                    DType::F32
                };
                let a = self.try_to_dtype(dt)?;
                let s = a.filled(v);
                Ok((a, s))
            }
            Operand::Int(v) => {
                let dt = match self.dtype() {
                    d if d.is_float() => d,
                    _ if want_float => DType::F32,
                    _ => DType::I64,
                };
                let a = self.try_to_dtype(dt)?;
                let s = a.filled(v as f64);
                Ok((a, s))
            }
        }
    }

    #[track_caller]
    fn binary_op(&self, other: Operand<'_>, op: BinaryOp, label: &'static str) -> Result<Tensor> {
        let float = matches!(op, BinaryOp::Div | BinaryOp::Pow);
        let op = Op::Binary(op);
        let (a, b) = self.operand(other, float, op.name())?;
        Tensor::apply(op, vec![a, b], Some(label))
    }

    #[track_caller]
    fn unary_op(&self, op: UnaryOp, label: &'static str) -> Result<Tensor> {
        let a = if matches!(op, UnaryOp::Neg | UnaryOp::Abs) || self.dtype().is_float() {
            self.clone()
        } else {
            self.try_to_dtype(DType::F32)?
        };
        Tensor::apply(Op::Unary(op), vec![a], Some(label))
    }

    // ----- elementwise ----------------------------------------------------------------------

    binary_methods! {
        /// `self + other`, broadcasting (`torch.add`).
        try_add, add => Add, "Add";
        /// `self - other`, broadcasting (`torch.sub`).
        try_sub, sub => Sub, "Sub";
        /// `self * other`, broadcasting (`torch.mul`).
        try_mul, mul => Mul, "Mul";
        /// `self / other`, broadcasting (`torch.div`, true division).
        try_div, div => Div, "Div";
        /// `self ** exponent` (`torch.pow`).
        try_pow, pow => Pow, "Pow";
        /// Elementwise maximum (`torch.maximum`); ties split the gradient evenly.
        try_maximum, maximum => Max, "Maximum";
        /// Elementwise minimum (`torch.minimum`); ties split the gradient evenly.
        try_minimum, minimum => Min, "Minimum";
    }

    unary_methods! {
        neg => Neg, "Neg";
        exp => Exp, "Exp";
        log => Log, "Log";
        sqrt => Sqrt, "Sqrt";
        reciprocal => Recip, "Reciprocal";
        abs => Abs, "Abs";
        tanh => Tanh, "Tanh";
        sigmoid => Sigmoid, "Sigmoid";
    }
    #[track_caller]
    pub fn square(&self) -> Tensor {
        self.mul(self)
    }

    /// `max(x, 0)` as `where(x > 0, x, 0)`, so the gradient at 0 is 0 as in PyTorch.
    #[track_caller]
    pub fn relu(&self) -> Tensor {
        let zero = self.filled(0.0);
        let mask = self.gt(&zero);
        crate::where_labeled(&mask, self, &zero, "Relu")
    }

    /// `x` for `x > 0`, `slope * x` otherwise.
    #[track_caller]
    pub fn leaky_relu(&self, slope: f64) -> Tensor {
        let mask = self.gt(0.0);
        crate::where_labeled(&mask, self, &self.mul(slope), "LeakyRelu")
    }

    /// Clamps to `[min, max]` (either bound optional). The gradient passes where
    /// `min <= x <= max`, inclusive at the bounds, as PyTorch's `clamp`.
    #[track_caller]
    pub fn clamp(&self, min: Option<f64>, max: Option<f64>) -> Tensor {
        let mut y = self.clone();
        if let Some(lo) = min {
            let c = y.filled(lo);
            y = crate::where_labeled(&y.lt(&c), &c, &y, "Clamp");
        }
        if let Some(hi) = max {
            let c = y.filled(hi);
            y = crate::where_labeled(&y.gt(&c), &c, &y, "Clamp");
        }
        y
    }

    #[track_caller]
    fn compare(&self, o: Operand<'_>, op: CmpOp) -> Result<Tensor> {
        let op = Op::Compare(op);
        let (a, b) = self.operand(o, false, op.name())?;
        Tensor::apply(op, vec![a, b], None)
    }

    #[track_caller]
    pub fn try_eq<'a>(&self, o: impl Into<Operand<'a>>) -> Result<Tensor> {
        self.compare(o.into(), CmpOp::Eq)
    }
    compare_methods! {
        eq => Eq;
        ne => Ne;
        lt => Lt;
        le => Le;
        gt => Gt;
        ge => Ge;
    }

    /// Converts the element type (`.to(dtype)`): float to int truncates toward zero.
    #[track_caller]
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        self.try_to_dtype(dtype).unwrap_or_else(|e| panic!("{e}"))
    }
    #[track_caller]
    pub fn try_to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if self.dtype() == dtype {
            return Ok(self.clone());
        }
        Tensor::apply(Op::Cast(dtype), vec![self.clone()], Some("ToCopy"))
    }
    #[track_caller]
    pub fn float(&self) -> Tensor {
        self.to_dtype(DType::F32)
    }
    #[track_caller]
    pub fn double(&self) -> Tensor {
        self.to_dtype(DType::F64)
    }
    #[track_caller]
    pub fn long(&self) -> Tensor {
        self.to_dtype(DType::I64)
    }

    // ----- reductions -----------------------------------------------------------------------

    #[track_caller]
    fn reduce(
        &self,
        op: ReduceOp,
        dims: Option<&[isize]>,
        keepdim: bool,
        name: &'static str,
    ) -> Result<Tensor> {
        let axes = match dims {
            None => (0..self.ndim()).collect(),
            Some(d) => dims_of(name, d, self.ndim())?,
        };
        let src = if op == ReduceOp::Sum && self.dtype() == DType::Bool {
            self.try_to_dtype(DType::I64)?
        } else {
            self.clone()
        };
        let label = if op == ReduceOp::Sum { "Sum" } else { "Amax" };
        let r = Tensor::apply(
            Op::Reduce {
                op,
                axes: axes.clone(),
            },
            vec![src],
            Some(label),
        )?;
        if keepdim {
            return Ok(r);
        }
        let shape: Vec<usize> = self
            .shape()
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect();
        // Dropping the axes is part of the reduction (`grad_fn` is `SumBackward0`, not a view).
        r.try_reshape_exact(shape, Some(label))
    }

    /// Sum over `dims` (`x.sum(dims, keepdim)`).
    #[track_caller]
    pub fn sum(&self, dims: &[isize], keepdim: bool) -> Tensor {
        self.reduce(ReduceOp::Sum, Some(dims), keepdim, "sum")
            .unwrap_or_else(|e| panic!("{e}"))
    }
    /// Sum of all elements, a 0-d tensor.
    #[track_caller]
    pub fn sum_all(&self) -> Tensor {
        self.reduce(ReduceOp::Sum, None, false, "sum")
            .unwrap_or_else(|e| panic!("{e}"))
    }
    #[track_caller]
    fn try_mean(&self, dims: Option<&[isize]>, keepdim: bool) -> Result<Tensor> {
        let x = if self.dtype().is_float() {
            self.clone()
        } else {
            self.try_to_dtype(DType::F32)?
        };
        let s = x.reduce(ReduceOp::Sum, dims, keepdim, "mean")?;
        let count = x.numel() / s.numel().max(1);
        let scale = s.filled(1.0 / count as f64);
        Tensor::apply(Op::Binary(BinaryOp::Mul), vec![s, scale], Some("Mean"))
    }
    /// Mean over `dims`.
    #[track_caller]
    pub fn mean(&self, dims: &[isize], keepdim: bool) -> Tensor {
        self.try_mean(Some(dims), keepdim)
            .unwrap_or_else(|e| panic!("{e}"))
    }
    /// Mean of all elements, a 0-d tensor.
    #[track_caller]
    pub fn mean_all(&self) -> Tensor {
        self.try_mean(None, false).unwrap_or_else(|e| panic!("{e}"))
    }
    /// Maximum over `dims` (`amax`); ties share the gradient evenly.
    #[track_caller]
    pub fn amax(&self, dims: &[isize], keepdim: bool) -> Tensor {
        self.reduce(ReduceOp::Max, Some(dims), keepdim, "amax")
            .unwrap_or_else(|e| panic!("{e}"))
    }
    /// Minimum over `dims` (`amin`), as `-amax(-x)`.
    #[track_caller]
    pub fn amin(&self, dims: &[isize], keepdim: bool) -> Tensor {
        self.neg().amax(dims, keepdim).neg()
    }
    /// The largest element, a 0-d tensor.
    #[track_caller]
    pub fn max_all(&self) -> Tensor {
        self.reduce(ReduceOp::Max, None, false, "max")
            .unwrap_or_else(|e| panic!("{e}"))
    }
    /// The smallest element, a 0-d tensor.
    #[track_caller]
    pub fn min_all(&self) -> Tensor {
        self.neg().max_all().neg()
    }
    /// Index of the first maximum along `dim` (i64; not differentiable).
    #[track_caller]
    pub fn argmax(&self, dim: isize, keepdim: bool) -> Tensor {
        let d = norm_dim(dim, self.ndim()).unwrap_or_else(|e| panic!("{e}"));
        if self.ndim() == 0 {
            return Tensor::constant(0.0, DType::I64, vec![]);
        }
        let n = self.shape()[d];
        let m = self.amax(&[d as isize], true);
        let mut ishape = vec![1; self.ndim()];
        ishape[d] = n;
        let idx = Tensor::arange(0.0, n as f64, 1.0, DType::I64)
            .reshape(&ishape.iter().map(|&x| x as isize).collect::<Vec<_>>());
        let big = Tensor::constant(n as f64, DType::I64, vec![]);
        let cand = crate::where_(&self.eq(&m), &idx, &big);
        cand.neg().amax(&[d as isize], keepdim).neg()
    }
    /// Variance over `dims`, with Bessel's correction when `unbiased`.
    #[track_caller]
    pub fn var(&self, dims: &[isize], unbiased: bool, keepdim: bool) -> Tensor {
        let mu = self.mean(dims, true);
        let d = self.sub(&mu);
        let ss = d.mul(&d).sum(dims, keepdim);
        let n = (self.numel() / ss.numel().max(1)) as f64;
        ss.div(if unbiased { n - 1.0 } else { n })
    }

    // ----- movement -------------------------------------------------------------------------

    #[track_caller]
    fn try_reshape_exact(&self, shape: Vec<usize>, label: Option<&'static str>) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        Tensor::apply(
            Op::Reshape(shape),
            vec![self.clone()],
            label.or(Some("View")),
        )
    }

    /// New shape with the same elements; one entry may be `-1` (inferred).
    #[track_caller]
    pub fn try_reshape(&self, shape: &[isize]) -> Result<Tensor> {
        let known: usize = shape
            .iter()
            .filter(|&&d| d >= 0)
            .map(|&d| d as usize)
            .product();
        let holes = shape.iter().filter(|&&d| d < 0).count();
        if holes > 1 || shape.iter().any(|&d| d < -1) {
            return Err(Error::shape(
                "reshape",
                format!("invalid shape {shape:?}: only one -1 is allowed"),
            ));
        }
        let out: Vec<usize> = if holes == 1 {
            if known == 0 || !self.numel().is_multiple_of(known) {
                return Err(Error::shape(
                    "reshape",
                    format!(
                        "shape {shape:?} is invalid for a tensor of {} elements ({})",
                        self.numel(),
                        fmt_shape(self.shape())
                    ),
                ));
            }
            shape
                .iter()
                .map(|&d| {
                    if d < 0 {
                        self.numel() / known
                    } else {
                        d as usize
                    }
                })
                .collect()
        } else {
            shape.iter().map(|&d| d as usize).collect()
        };
        self.try_reshape_exact(out, None)
    }
    #[track_caller]
    pub fn reshape(&self, shape: &[isize]) -> Tensor {
        self.try_reshape(shape).unwrap_or_else(|e| panic!("{e}"))
    }
    /// Alias of [`Tensor::reshape`] (every kiln tensor is contiguous).
    #[track_caller]
    pub fn view(&self, shape: &[isize]) -> Tensor {
        self.reshape(shape)
    }
    /// Flattens axes `start..=end` into one.
    #[track_caller]
    pub fn flatten(&self, start: isize, end: isize) -> Tensor {
        if self.ndim() == 0 {
            return self.reshape(&[1]);
        }
        let s = norm_dim(start, self.ndim()).unwrap_or_else(|e| panic!("{e}"));
        let e = norm_dim(end, self.ndim()).unwrap_or_else(|e| panic!("{e}"));
        let mut shape: Vec<isize> = self.shape()[..s].iter().map(|&d| d as isize).collect();
        shape.push(self.shape()[s..=e].iter().product::<usize>() as isize);
        shape.extend(self.shape()[e + 1..].iter().map(|&d| d as isize));
        self.reshape(&shape)
    }
    /// Inserts an axis of size 1 at `dim`.
    #[track_caller]
    pub fn unsqueeze(&self, dim: isize) -> Tensor {
        let d = norm_dim(dim, self.ndim() + 1).unwrap_or_else(|e| panic!("{e}"));
        let mut shape = self.shape().to_vec();
        shape.insert(d, 1);
        self.try_reshape_exact(shape, None)
            .unwrap_or_else(|e| panic!("{e}"))
    }
    /// Removes axis `dim` if it has size 1.
    #[track_caller]
    pub fn squeeze(&self, dim: isize) -> Tensor {
        let d = norm_dim(dim, self.ndim()).unwrap_or_else(|e| panic!("{e}"));
        if self.ndim() == 0 || self.shape()[d] != 1 {
            return self.clone();
        }
        let mut shape = self.shape().to_vec();
        shape.remove(d);
        self.try_reshape_exact(shape, None)
            .unwrap_or_else(|e| panic!("{e}"))
    }
    #[track_caller]
    pub fn try_permute(&self, dims: &[isize]) -> Result<Tensor> {
        if dims.len() != self.ndim() {
            return Err(Error::shape(
                "permute",
                format!(
                    "{dims:?} has {} entries for a tensor of rank {}",
                    dims.len(),
                    self.ndim()
                ),
            ));
        }
        let mut perm = Vec::with_capacity(dims.len());
        for &d in dims {
            let Ok(p) = norm_dim(d, self.ndim()) else {
                return Err(Error::shape(
                    "permute",
                    format!("{dims:?} is not a permutation"),
                ));
            };
            perm.push(p);
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(self.clone());
        }
        Tensor::apply(Op::Permute(perm), vec![self.clone()], Some("Permute"))
    }
    #[track_caller]
    pub fn permute(&self, dims: &[isize]) -> Tensor {
        self.try_permute(dims).unwrap_or_else(|e| panic!("{e}"))
    }
    /// Swaps two axes.
    #[track_caller]
    pub fn transpose(&self, d0: isize, d1: isize) -> Tensor {
        let r = self.ndim();
        let a = norm_dim(d0, r).unwrap_or_else(|e| panic!("{e}"));
        let b = norm_dim(d1, r).unwrap_or_else(|e| panic!("{e}"));
        if r == 0 {
            return self.clone();
        }
        let mut perm: Vec<isize> = (0..r as isize).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }
    /// Transpose of a matrix (`.t()`).
    #[track_caller]
    pub fn t(&self) -> Tensor {
        assert!(
            self.ndim() <= 2,
            "t() expects a tensor of rank <= 2, got shape {:?}",
            self.shape()
        );
        if self.ndim() < 2 {
            return self.clone();
        }
        self.transpose(0, 1)
    }

    /// Broadcasts to `shape` by NumPy rules.
    #[track_caller]
    pub fn try_broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let ok = broadcast_shapes(self.shape(), shape).as_deref() == Some(shape);
        if !ok {
            return Err(Error::shape(
                "expand",
                format!(
                    "cannot broadcast {} to {}",
                    fmt_shape(self.shape()),
                    fmt_shape(shape)
                ),
            ));
        }
        let mut padded = vec![1; shape.len() - self.ndim()];
        padded.extend_from_slice(self.shape());
        let r = self.try_reshape_exact(padded, None)?;
        if r.shape() == shape {
            return Ok(r);
        }
        Tensor::apply(Op::Expand(shape.to_vec()), vec![r], Some("Expand"))
    }
    #[track_caller]
    pub fn broadcast_to(&self, shape: &[usize]) -> Tensor {
        self.try_broadcast_to(shape)
            .unwrap_or_else(|e| panic!("{e}"))
    }
    /// `x.expand(sizes)`: `-1` keeps a size; new leading axes may be added (not as `-1`).
    #[track_caller]
    pub fn expand(&self, sizes: &[isize]) -> Tensor {
        let lead = sizes.len().saturating_sub(self.ndim());
        let mut shape = Vec::with_capacity(sizes.len());
        for (i, &s) in sizes.iter().enumerate() {
            if s >= 0 {
                shape.push(s as usize);
            } else if s == -1 && i >= lead {
                shape.push(self.shape()[i - lead]);
            } else {
                let e = Error::shape(
                    "expand",
                    format!(
                        "size {s} at axis {i} of {sizes:?} is not allowed for shape {}: -1 keeps an existing axis, new leading axes need a size",
                        fmt_shape(self.shape())
                    ),
                );
                panic!("{e}");
            }
        }
        self.broadcast_to(&shape)
    }
    #[track_caller]
    pub fn expand_as(&self, other: &Tensor) -> Tensor {
        self.broadcast_to(other.shape())
    }

    /// Elements `start, start+step, ...` below `end` along `dim`, with Python's slicing rules
    /// (negative indices count from the end, out-of-range bounds are clamped).
    #[track_caller]
    pub fn try_slice(&self, dim: isize, start: isize, end: isize, step: usize) -> Result<Tensor> {
        let Ok(d) = norm_dim(dim, self.ndim()) else {
            return Err(Error::shape(
                "slice",
                format!("dim {dim} out of range for rank {}", self.ndim()),
            ));
        };
        if step == 0 {
            return Err(Error::shape("slice", "step must be positive"));
        }
        if self.ndim() == 0 {
            return Err(Error::shape("slice", "a 0-d tensor cannot be sliced"));
        }
        let n = self.shape()[d] as isize;
        let clampi = |i: isize| if i < 0 { (i + n).max(0) } else { i.min(n) } as usize;
        let (s, e) = (clampi(start), clampi(end));
        let mut axes: Vec<SliceAxis> = self.shape().iter().map(|&n| SliceAxis::full(n)).collect();
        axes[d] = SliceAxis {
            start: s,
            end: e.max(s),
            step,
        };
        if axes[d] == SliceAxis::full(n as usize) {
            return Ok(self.clone());
        }
        Tensor::apply(Op::Slice(axes), vec![self.clone()], Some("Slice"))
    }
    #[track_caller]
    pub fn slice(&self, dim: isize, start: isize, end: isize, step: usize) -> Tensor {
        self.try_slice(dim, start, end, step)
            .unwrap_or_else(|e| panic!("{e}"))
    }
    /// `length` elements from `start` along `dim` (`x.narrow`).
    #[track_caller]
    pub fn try_narrow(&self, dim: isize, start: usize, length: usize) -> Result<Tensor> {
        let Ok(d) = norm_dim(dim, self.ndim()) else {
            return Err(Error::shape(
                "narrow",
                format!("dim {dim} out of range for rank {}", self.ndim()),
            ));
        };
        if self.ndim() == 0 {
            return Err(Error::shape("narrow", "a 0-d tensor cannot be narrowed"));
        }
        if start + length > self.shape()[d] {
            return Err(Error::shape(
                "narrow",
                format!(
                    "start {start} + length {length} exceeds size {} of dim {dim}",
                    self.shape()[d]
                ),
            ));
        }
        self.try_slice(dim, start as isize, (start + length) as isize, 1)
    }
    #[track_caller]
    pub fn narrow(&self, dim: isize, start: usize, length: usize) -> Tensor {
        self.try_narrow(dim, start, length)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Constant padding in PyTorch's order: `pad = [last_lo, last_hi, prev_lo, prev_hi, ...]`.
    /// Negative amounts crop.
    #[track_caller]
    pub fn try_pad(&self, pad: &[isize], value: f64) -> Result<Tensor> {
        if !pad.len().is_multiple_of(2) || pad.len() / 2 > self.ndim() {
            return Err(Error::shape(
                "pad",
                format!(
                    "pad {pad:?} must have an even length of at most 2 x rank ({})",
                    self.ndim()
                ),
            ));
        }
        let r = self.ndim();
        let (mut lo, mut hi) = (vec![0usize; r], vec![0usize; r]);
        let mut x = self.clone();
        for (k, pair) in pad.chunks(2).enumerate() {
            let ax = r - 1 - k;
            let (l, h) = (pair[0], pair[1]);
            if l < 0 || h < 0 {
                let n = x.shape()[ax] as isize;
                let s = (-l).max(0);
                let e = n - (-h).max(0);
                if e < s {
                    return Err(Error::shape(
                        "pad",
                        format!("negative padding {pad:?} removes all of axis {ax}"),
                    ));
                }
                x = x.try_slice(ax as isize, s, e, 1)?;
            }
            lo[ax] = l.max(0) as usize;
            hi[ax] = h.max(0) as usize;
        }
        if lo.iter().chain(&hi).all(|&p| p == 0) {
            return Ok(x);
        }
        Tensor::apply(Op::Pad { lo, hi, value }, vec![x], Some("ConstantPadNd"))
    }
    #[track_caller]
    pub fn pad(&self, pad: &[isize], value: f64) -> Tensor {
        self.try_pad(pad, value).unwrap_or_else(|e| panic!("{e}"))
    }

    // ----- contractions ---------------------------------------------------------------------

    /// Matrix product with `torch.matmul`'s rules: 1-D operands are promoted and the added
    /// axis removed, batch axes broadcast.
    #[track_caller]
    pub fn try_matmul(&self, other: &Tensor) -> Result<Tensor> {
        let (ra, rb) = (self.ndim(), other.ndim());
        if ra == 0 || rb == 0 {
            return Err(Error::shape(
                "matmul",
                "both arguments need at least one dimension",
            ));
        }
        let dt = promote_tensors(self, other);
        let dt = if dt.is_float() { dt } else { DType::F32 };
        let a = if ra == 1 {
            self.unsqueeze(0)
        } else {
            self.clone()
        }
        .try_to_dtype(dt)?;
        let b = if rb == 1 {
            other.unsqueeze(1)
        } else {
            other.clone()
        }
        .try_to_dtype(dt)?;
        let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
        let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
        if k != k2 {
            return Err(Error::shape(
                "matmul",
                format!(
                    "cannot multiply {} by {}: inner sizes {k} and {k2} differ",
                    fmt_shape(self.shape()),
                    fmt_shape(other.shape())
                ),
            ));
        }
        let Some(batch) = broadcast_shapes(&sa[..sa.len() - 2], &sb[..sb.len() - 2]) else {
            return Err(Error::shape(
                "matmul",
                format!(
                    "batch dims of {} and {} do not broadcast",
                    fmt_shape(&sa),
                    fmt_shape(&sb)
                ),
            ));
        };
        let mut fa = batch.clone();
        fa.extend([m, k]);
        let mut fb = batch.clone();
        fb.extend([k, n]);
        let out = Tensor::apply(
            Op::MatMul,
            vec![a.try_broadcast_to(&fa)?, b.try_broadcast_to(&fb)?],
            Some("Mm"),
        )?;
        let mut shape = batch;
        if ra > 1 {
            shape.push(m);
        }
        if rb > 1 {
            shape.push(n);
        }
        out.try_reshape_exact(shape, None)
    }
    #[track_caller]
    pub fn matmul(&self, other: &Tensor) -> Tensor {
        self.try_matmul(other).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Concatenates tensors along `dim` (`torch.cat`).
#[track_caller]
pub fn try_cat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
    let Some(first) = tensors.first() else {
        return Err(Error::shape("cat", "expected a non-empty list of tensors"));
    };
    let d = norm_dim(dim, first.ndim())?;
    let dt = tensors
        .iter()
        .map(|t| t.dtype())
        .reduce(promote)
        .expect("non-empty");
    let parts: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.try_to_dtype(dt))
        .collect::<Result<_>>()?;
    if parts.len() == 1 {
        return Ok(parts[0].clone());
    }
    Tensor::apply(Op::Concat(d), parts, Some("Cat"))
}

#[track_caller]
pub fn cat(tensors: &[&Tensor], dim: isize) -> Tensor {
    try_cat(tensors, dim).unwrap_or_else(|e| panic!("{e}"))
}

/// Stacks tensors of one shape along a new axis `dim` (`torch.stack`).
#[track_caller]
pub fn stack(tensors: &[&Tensor], dim: isize) -> Tensor {
    let r = tensors.first().map(|t| t.ndim()).unwrap_or(0);
    let d = norm_dim(dim, r + 1).unwrap_or_else(|e| panic!("{e}"));
    let parts: Vec<Tensor> = tensors.iter().map(|t| t.unsqueeze(d as isize)).collect();
    cat(&parts.iter().collect::<Vec<_>>(), d as isize)
}

/// `torch.where(cond, a, b)` with broadcasting; `a` and `b` may be scalars.
#[track_caller]
pub fn where_<'a, 'b>(
    cond: &Tensor,
    a: impl Into<Operand<'a>>,
    b: impl Into<Operand<'b>>,
) -> Tensor {
    try_where(cond, a.into(), b.into(), "Where").unwrap_or_else(|e| panic!("{e}"))
}

#[track_caller]
pub(crate) fn where_labeled(cond: &Tensor, a: &Tensor, b: &Tensor, label: &'static str) -> Tensor {
    try_where(cond, Operand::Tensor(a), Operand::Tensor(b), label).unwrap_or_else(|e| panic!("{e}"))
}

#[track_caller]
fn try_where(cond: &Tensor, a: Operand<'_>, b: Operand<'_>, label: &'static str) -> Result<Tensor> {
    let (a, b) = match (a, b) {
        (Operand::Tensor(a), b) => a.operand(b, false, "where")?,
        (a, Operand::Tensor(b)) => {
            let (b2, a2) = b.operand(a, false, "where")?;
            (a2, b2)
        }
        // Two scalars: a 0-d tensor of the first one's kind, promoted with the second.
        (Operand::Scalar(x), y) => {
            Tensor::constant(x, DType::F32, vec![]).operand(y, false, "where")?
        }
        (Operand::Int(x), y) => {
            Tensor::constant(x as f64, DType::I64, vec![]).operand(y, false, "where")?
        }
    };
    let Some(shape) = broadcast_shapes(cond.shape(), a.shape()) else {
        return Err(Error::shape(
            "where",
            format!(
                "condition {} and values {} do not broadcast",
                fmt_shape(cond.shape()),
                fmt_shape(a.shape())
            ),
        ));
    };
    let c = if cond.dtype() == DType::Bool {
        cond.clone()
    } else {
        cond.try_to_dtype(DType::Bool)?
    };
    Tensor::apply(
        Op::Where,
        vec![
            c.try_broadcast_to(&shape)?,
            a.try_broadcast_to(&shape)?,
            b.try_broadcast_to(&shape)?,
        ],
        Some(label),
    )
}

// ----- operator overloading -------------------------------------------------------------------

macro_rules! binop {
    ($tr:ident, $m:ident, $f:ident) => {
        impl std::ops::$tr<&Tensor> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: &Tensor) -> Tensor {
                Tensor::$f(self, rhs)
            }
        }
        impl std::ops::$tr<Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: Tensor) -> Tensor {
                Tensor::$f(&self, &rhs)
            }
        }
        impl std::ops::$tr<&Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: &Tensor) -> Tensor {
                Tensor::$f(&self, rhs)
            }
        }
        impl std::ops::$tr<Tensor> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: Tensor) -> Tensor {
                Tensor::$f(self, &rhs)
            }
        }
        impl std::ops::$tr<f64> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: f64) -> Tensor {
                Tensor::$f(self, rhs)
            }
        }
        impl std::ops::$tr<f64> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: f64) -> Tensor {
                Tensor::$f(&self, rhs)
            }
        }
    };
}
binop!(Add, add, add);
binop!(Sub, sub, sub);
binop!(Mul, mul, mul);
binop!(Div, div, div);

macro_rules! scalar_lhs {
    ($tr:ident, $m:ident, |$s:ident, $t:ident| $e:expr) => {
        impl std::ops::$tr<&Tensor> for f64 {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: &Tensor) -> Tensor {
                let ($s, $t) = (self, rhs);
                $e
            }
        }
        impl std::ops::$tr<Tensor> for f64 {
            type Output = Tensor;
            #[track_caller]
            fn $m(self, rhs: Tensor) -> Tensor {
                let ($s, $t) = (self, &rhs);
                $e
            }
        }
    };
}
scalar_lhs!(Add, add, |s, t| t.add(s));
scalar_lhs!(Mul, mul, |s, t| t.mul(s));
scalar_lhs!(Sub, sub, |s, t| t.neg().add(s));
scalar_lhs!(Div, div, |s, t| t.reciprocal().mul(s));

impl std::ops::Neg for &Tensor {
    type Output = Tensor;
    #[track_caller]
    fn neg(self) -> Tensor {
        Tensor::neg(self)
    }
}
impl std::ops::Neg for Tensor {
    type Output = Tensor;
    #[track_caller]
    fn neg(self) -> Tensor {
        Tensor::neg(&self)
    }
}
