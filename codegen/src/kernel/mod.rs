//! The kernel IR: what the scheduler produces and the backends consume.
//!
//! A [`Kernel`] is a loop nest over index variables ([`Var`]) with 64-bit index arithmetic
//! ([`Ix`]), loads and stores over flat buffers, single-assignment scalar values ([`KOp`]),
//! accumulators for reductions, and calls for contractions. It is small on purpose:
//! - every op is one variant of [`KOp`], so the printer, the verifier, the interpreter and the
//!   JIT each match exhaustively;
//! - values are scalars: vectorisation is a property of a loop ([`Loop::vector`]) that the
//!   JIT implements, so the interpreter and the printer need not know about lanes;
//! - it is printable ([`print`]), checkable ([`verify`], which proves every unguarded access in
//!   bounds) and executable ([`interp`], bounds-checked, for tests).

pub mod index;
pub mod interp;
pub mod print;
pub mod vectorize;
pub mod verify;

pub use index::{Atom, Ix, Var};
pub use kiln_ir::{BinaryOp, CmpOp, ConvParams, DType, ReduceOp, UnaryOp};

/// A buffer parameter of a kernel: an index into [`Kernel::params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Buf(pub u32);

/// A single-assignment scalar value of a kernel: an index into [`Kernel::vals`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Val(pub u32);

/// An accumulator of a reduction: an index into [`Kernel::accs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Acc(pub u32);

/// How a kernel uses a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
    /// Read and written (a reduction that accumulates into its output).
    ReadWrite,
}

/// A buffer a kernel touches: its element type and length in elements.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Param {
    pub dtype: DType,
    pub len: u64,
    pub access: Access,
    /// What it holds, for dumps (`%7 f32[4,10]`).
    pub label: String,
}

/// A scalar constant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    F32(f32),
    F64(f64),
    I64(i64),
    Bool(bool),
}

impl Scalar {
    /// `value` converted to `dtype` as `kiln_ir::Data::splat` does (`as` casts, `!= 0`).
    pub fn from_f64(dtype: DType, value: f64) -> Scalar {
        match dtype {
            DType::F32 => Scalar::F32(value as f32),
            DType::F64 => Scalar::F64(value),
            DType::I64 => Scalar::I64(value as i64),
            DType::Bool => Scalar::Bool(value != 0.0),
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            Scalar::F32(_) => DType::F32,
            Scalar::F64(_) => DType::F64,
            Scalar::I64(_) => DType::I64,
            Scalar::Bool(_) => DType::Bool,
        }
    }

    /// The identity of a reduction in `dtype`: 0 for sums, the least value for max.
    pub fn identity(op: ReduceOp, dtype: DType) -> Scalar {
        match (op, dtype) {
            (ReduceOp::Sum, d) => Scalar::from_f64(d, 0.0),
            (ReduceOp::Max, DType::I64) => Scalar::I64(i64::MIN),
            (ReduceOp::Max, DType::Bool) => Scalar::Bool(false),
            (ReduceOp::Max, d) => Scalar::from_f64(d, f64::NEG_INFINITY),
        }
    }
}

/// One operation producing a scalar value.
#[derive(Clone, Debug, PartialEq)]
pub enum KOp {
    Const(Scalar),
    /// `buf[index]`. With a guard, the load happens only where the guard is true and the
    /// value is 0 elsewhere (padding, the inactive operands of a concat); the JIT clamps the
    /// index of a guarded load into the buffer, so a wrong guard gives a wrong value, never an
    /// access out of bounds.
    Load {
        buf: Buf,
        index: Ix,
        guard: Option<Val>,
    },
    Unary(UnaryOp, Val),
    Binary(BinaryOp, Val, Val),
    Compare(CmpOp, Val, Val),
    /// `cond ? a : b`.
    Select(Val, Val, Val),
    Cast(DType, Val),
    /// `lo <= index < hi`, a bool.
    InRange {
        index: Ix,
        lo: i64,
        hi: i64,
    },
    /// Logical and of two bools.
    And(Val, Val),
    /// The current value of an accumulator.
    ReadAcc(Acc),
}

/// A loop `for var in 0..extent`.
#[derive(Clone, Debug, PartialEq)]
pub struct Loop {
    pub var: Var,
    pub extent: u64,
    /// Iterations write disjoint elements and read nothing another iteration writes, so the
    /// range may be split across threads. Only ever set on a kernel's single outermost loop.
    pub parallel: bool,
    /// Lanes the JIT processes at once (1: scalar). Set by [`vectorize`] on innermost loops.
    pub vector: u32,
    pub body: Vec<Stmt>,
}

/// A statement of a kernel body.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Loop(Loop),
    Let(Val, KOp),
    Store {
        buf: Buf,
        index: Ix,
        value: Val,
    },
    /// Sets an accumulator to the identity of its reduction.
    AccInit(Acc),
    /// Folds a value into an accumulator.
    AccUpdate(Acc, Val),
}

/// An accumulator: its reduction and element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccDecl {
    pub op: ReduceOp,
    pub dtype: DType,
}

/// A contraction, run by a library routine over contiguous row-major buffers.
#[derive(Clone, Debug, PartialEq)]
pub enum Contraction {
    /// `[batch, m, k] x [batch, k, n] -> [batch, m, n]`.
    MatMul {
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
    },
    /// `conv(x, w) -> y` with the shapes of `x`, `w`, `y`.
    Conv {
        x: Vec<usize>,
        w: Vec<usize>,
        y: Vec<usize>,
        params: ConvParams,
    },
    /// `conv_transpose(x, w) -> y`.
    ConvTranspose {
        x: Vec<usize>,
        w: Vec<usize>,
        y: Vec<usize>,
        params: ConvParams,
    },
    /// `conv_weight(x, dy) -> dw`.
    ConvWeight {
        x: Vec<usize>,
        dy: Vec<usize>,
        dw: Vec<usize>,
        params: ConvParams,
    },
}

/// A contraction call: operands `inputs`, result `output`, all of `dtype`.
///
/// Epilogue fusion (bias add, activation applied while the result is still in cache) is the
/// next step: it will hang here as an elementwise body over the output's index, run by the
/// contraction routine per output tile; today the scheduler keeps such consumers in their own
/// kernels.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub op: Contraction,
    pub dtype: DType,
    pub inputs: [Buf; 2],
    pub output: Buf,
}

/// What a kernel does.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// A loop nest (elementwise and movement chains, reductions).
    Loops(Vec<Stmt>),
    /// A contraction.
    Call(Call),
}

/// One kernel: buffers, values and a body.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    /// Type of each value.
    pub vals: Vec<DType>,
    /// Extent of each variable: a loop's (also stored on the loop), or for a derived
    /// variable the range it is assumed to have under the guards of the loads that use it.
    pub vars: Vec<u64>,
    /// The definition of each derived variable (`None` for loop variables).
    pub defs: Vec<Option<Ix>>,
    pub accs: Vec<AccDecl>,
    pub body: Body,
}

impl Kernel {
    /// Total loop iterations (product of extents along each nest, summed), an estimate of
    /// the work for choosing whether to split across threads.
    pub fn work(&self) -> u64 {
        fn walk(stmts: &[Stmt]) -> u64 {
            let mut ops = 0u64;
            let mut inner = 0u64;
            for s in stmts {
                match s {
                    Stmt::Loop(l) => {
                        inner = inner.saturating_add(l.extent.saturating_mul(walk(&l.body).max(1)))
                    }
                    _ => ops += 1,
                }
            }
            inner.saturating_add(ops.min(1))
        }
        match &self.body {
            Body::Loops(stmts) => walk(stmts),
            Body::Call(_) => 0,
        }
    }

    /// The kernel's single outermost loop, if its body is one loop marked parallel.
    pub fn parallel_loop(&self) -> Option<&Loop> {
        match &self.body {
            Body::Loops(stmts) => match stmts.as_slice() {
                [Stmt::Loop(l)] if l.parallel => Some(l),
                _ => None,
            },
            Body::Call(_) => None,
        }
    }
}
