//! PTX from the kernel IR: the GPU's half of "one kernel IR, two backends".
//!
//! [`emit`] prints one [`Kernel`] as a PTX module (`.version 7.0` for `sm_80`, `8.0` for
//! `sm_90`, 64-bit addressing) with one `.entry`, and returns it with the launch it needs.
//!
//! **Thread mapping** ([`Mapping`]). A kernel whose outermost loop is parallel (its iterations
//! write disjoint elements) gets a 1-D grid-stride loop over the *collapsed perfect nest* below
//! it: the parallel loop and every loop that is the only statement of the previous one. The
//! flat index `t = blockIdx.x * blockDim.x + threadIdx.x (+ k * gridDim.x * blockDim.x)` is
//! split back into the loop variables by division and remainder, innermost fastest, so
//! neighbouring threads touch neighbouring elements of row-major buffers (coalesced accesses
//! where the layout allows). What lies below the collapsed nest (a reduction's inner loops, say)
//! runs sequentially in each thread: a reduction is one thread per output element with a
//! sequential inner loop. A kernel without a parallel loop runs on a single thread. The tests
//! check on the CPU that the mapping covers every output element exactly once
//! (`codegen/tests/ptx.rs`).
//!
//! **Contractions** (`Body::Call`) are first rewritten as loop nests of the same IR
//! ([`super::contract::as_loops`]): one thread per output element, a sequential loop over the
//! contracted indices (a tiled shared-memory kernel is the next step). [`emit`] returns
//! [`EmitError::Unsupported`] for the few scalar operations without a PTX lowering yet (f64
//! `exp`/`log`/`tanh`/`sigmoid`/`pow`).
//!
//! Arithmetic: f32 `exp`, `log`, `tanh` and `sigmoid` use the hardware approximations (`ex2`,
//! `lg2`, `tanh.approx`), as the CPU JIT uses polynomial ones; `max`/`min` propagate NaN as
//! PyTorch does; float-to-integer casts truncate and saturate (PTX `cvt.rzi`, NaN to 0), as
//! Rust's `as`. Index arithmetic is 64-bit throughout.

use crate::kernel::{
    Access, Atom, BinaryOp, Body, CmpOp, DType, Ix, KOp, Kernel, ReduceOp, Scalar, Stmt, UnaryOp,
    Var,
};
use std::fmt::Write;

/// A GPU architecture to emit for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Ampere (A100): PTX ISA 7.0.
    Sm80,
    /// Hopper (H100, H200): PTX ISA 8.0.
    Sm90,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::Sm80, Target::Sm90];

    /// The name `ptxas --gpu-name` takes.
    pub fn name(self) -> &'static str {
        match self {
            Target::Sm80 => "sm_80",
            Target::Sm90 => "sm_90",
        }
    }

    /// The PTX ISA version written in `.version`.
    pub fn isa_version(self) -> &'static str {
        match self {
            Target::Sm80 => "7.0",
            Target::Sm90 => "8.0",
        }
    }
}

/// Threads per block of grid-stride kernels (also written as `.maxntid`).
pub const BLOCK: u32 = 256;
/// At most this many blocks are launched; the grid-stride loop covers the rest.
pub const MAX_GRID: u32 = 1 << 16;

/// How a kernel's iterations are spread over GPU threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// One thread runs the whole body (the kernel has no parallel loop).
    Single,
    /// A grid-stride loop over `total` flat indices, each split into the collapsed loops'
    /// variables (outermost first, innermost varying fastest).
    GridStride { loops: Vec<(Var, u64)>, total: u64 },
}

impl Mapping {
    /// The mapping [`emit`] uses for `k`.
    pub fn of(k: &Kernel) -> Mapping {
        collapse(k).map_or(Mapping::Single, |(loops, _)| {
            let total = loops.iter().map(|&(_, e)| e).product();
            Mapping::GridStride { loops, total }
        })
    }

    /// The values of the collapsed loops' variables at flat index `t` (as the PTX computes
    /// them).
    pub fn split(&self, t: u64) -> Vec<(Var, u64)> {
        match self {
            Mapping::Single => Vec::new(),
            Mapping::GridStride { loops, .. } => {
                let mut rest = t;
                let mut out: Vec<(Var, u64)> = loops
                    .iter()
                    .rev()
                    .map(|&(v, e)| {
                        let x = rest % e.max(1);
                        rest /= e.max(1);
                        (v, x)
                    })
                    .collect();
                out.reverse();
                out
            }
        }
    }

    /// `(grid, block)` of the launch: enough blocks for one index per thread, at most
    /// `max_grid` of them.
    pub fn launch(&self, max_grid: u32) -> (u32, u32) {
        match self {
            Mapping::Single => (1, 1),
            Mapping::GridStride { total, .. } => {
                let blocks = total.div_ceil(u64::from(BLOCK)).max(1);
                (blocks.min(u64::from(max_grid.max(1))) as u32, BLOCK)
            }
        }
    }

    /// The flat indices thread `thread` of block `block` visits in a launch of
    /// `grid` x `block_dim` threads (the grid-stride loop); `Single`: thread (0, 0) runs once.
    pub fn visits(&self, grid: u32, block_dim: u32, block: u32, thread: u32) -> Vec<u64> {
        match self {
            Mapping::Single => {
                if block == 0 && thread == 0 {
                    vec![0]
                } else {
                    Vec::new()
                }
            }
            Mapping::GridStride { total, .. } => {
                let stride = u64::from(grid) * u64::from(block_dim);
                let mut t = u64::from(block) * u64::from(block_dim) + u64::from(thread);
                let mut out = Vec::new();
                while t < *total {
                    out.push(t);
                    t += stride.max(1);
                }
                out
            }
        }
    }
}

/// The collapsed loops (variable, extent; outermost first) and the statements each thread runs
/// for one flat index.
pub type Nest<'a> = (Vec<(Var, u64)>, &'a [Stmt]);

/// The collapsed perfect nest under a parallel outermost loop, and the statements below it.
/// `None` when the kernel has no parallel loop.
pub fn collapse(k: &Kernel) -> Option<Nest<'_>> {
    let l = k.parallel_loop()?;
    let mut loops = vec![(l.var, l.extent)];
    let mut body: &[Stmt] = &l.body;
    while let [Stmt::Loop(inner)] = body {
        loops.push((inner.var, inner.extent));
        body = &inner.body;
    }
    Some((loops, body))
}

/// A kernel printed as PTX, with its launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtxKernel {
    /// The `.entry` name.
    pub entry: String,
    pub target: Target,
    pub text: String,
    pub mapping: Mapping,
    /// `(grid, block)` to launch with.
    pub launch: (u32, u32),
}

/// Why a kernel could not be emitted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The kernel uses something the PTX emitter does not lower yet.
    #[error("kernel {kernel}: no PTX lowering yet for {what}")]
    Unsupported { kernel: String, what: String },
    /// The kernel is malformed (a value of the wrong type, say): a bug upstream.
    #[error("kernel {kernel}: {what}")]
    Invalid { kernel: String, what: String },
}

/// The `.entry` name of a kernel: `kiln_` and its name with anything but `[A-Za-z0-9_]`
/// replaced by `_`.
pub fn entry_name(k: &Kernel) -> String {
    let clean: String = k
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("kiln_{clean}")
}

/// Emits `k` for `target`.
pub fn emit(k: &Kernel, target: Target) -> Result<PtxKernel, EmitError> {
    if let Some(loops) = super::contract::as_loops(k)? {
        return emit(&loops, target);
    }
    let Body::Loops(stmts) = &k.body else {
        return Err(EmitError::Invalid {
            kernel: k.name.clone(),
            what: "a contraction left after lowering to loops".into(),
        });
    };
    let entry = entry_name(k);
    let mapping = Mapping::of(k);
    let mut em = Em::new(k);
    match collapse(k) {
        None => {
            em.line("mov.u32 %r0, %ctaid.x;");
            em.line("mov.u32 %r1, %tid.x;");
            em.line("or.b32 %r0, %r0, %r1;");
            em.line("setp.ne.u32 %q0, %r0, 0;");
            em.line("@%q0 bra $L_exit;");
            em.nr = 2;
            em.nq = 1;
            em.stmts(stmts)?;
        }
        Some((loops, body)) => {
            let total: u64 = loops.iter().map(|&(_, e)| e).product();
            em.nr = 4;
            em.nq = 1;
            em.line("mov.u32 %r0, %ctaid.x;");
            em.line("mov.u32 %r1, %ntid.x;");
            em.line("mov.u32 %r2, %tid.x;");
            em.line("mov.u32 %r3, %nctaid.x;");
            em.line("mul.wide.u32 %flat, %r0, %r1;");
            em.line("cvt.u64.u32 %step, %r2;");
            em.line("add.s64 %flat, %flat, %step;");
            em.line("mul.wide.u32 %step, %r3, %r1;");
            em.label("$L_grid");
            em.line(&format!("setp.ge.u64 %q0, %flat, {total};"));
            em.line("@%q0 bra $L_exit;");
            // Split the flat index, innermost fastest.
            em.line("mov.u64 %rest, %flat;");
            for (n, &(v, e)) in loops.iter().enumerate().rev() {
                if n == 0 {
                    em.line(&format!("mov.u64 %i{}, %rest;", v.0));
                } else {
                    em.line(&format!("rem.u64 %i{}, %rest, {e};", v.0));
                    em.line(&format!("div.u64 %rest, %rest, {e};"));
                }
            }
            em.stmts(body)?;
            em.line("add.s64 %flat, %flat, %step;");
            em.line("bra.uni $L_grid;");
        }
    }
    em.label("$L_exit");
    em.line("ret;");
    let text = em.finish(target, &entry, &mapping);
    let launch = mapping.launch(MAX_GRID);
    Ok(PtxKernel {
        entry,
        target,
        text,
        mapping,
        launch,
    })
}

/// PTX's spelling of a float constant: the bits in hex.
fn f32_imm(x: f32) -> String {
    format!("0f{:08X}", x.to_bits())
}

fn f64_imm(x: f64) -> String {
    format!("0d{:016X}", x.to_bits())
}

/// The register of value `n` of type `d`.
fn reg(d: DType, n: u32) -> String {
    match d {
        DType::F32 => format!("%f{n}"),
        DType::F64 => format!("%d{n}"),
        DType::I64 => format!("%l{n}"),
        DType::Bool => format!("%p{n}"),
    }
}

/// The register of accumulator `n`.
fn acc_reg(d: DType, n: u32) -> String {
    match d {
        DType::F32 => format!("%af{n}"),
        DType::F64 => format!("%ad{n}"),
        DType::I64 => format!("%al{n}"),
        DType::Bool => format!("%ap{n}"),
    }
}

/// The PTX type suffix of arithmetic on `d` (not for bools).
fn ty(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::I64 => "s64",
        DType::Bool => "pred",
    }
}

struct Em<'k> {
    k: &'k Kernel,
    body: String,
    /// Scratch registers used: s64 `%t`, pred `%q`, u16 `%h`, u32 `%r`, f32 `%tf`, f64 `%td`.
    nt: u32,
    nq: u32,
    nh: u32,
    nr: u32,
    ntf: u32,
    ntd: u32,
    labels: u32,
}

impl<'k> Em<'k> {
    fn new(k: &'k Kernel) -> Em<'k> {
        Em {
            k,
            body: String::new(),
            nt: 0,
            nq: 0,
            nh: 0,
            nr: 0,
            ntf: 0,
            ntd: 0,
            labels: 0,
        }
    }

    fn line(&mut self, s: &str) {
        self.body.push('\t');
        self.body.push_str(s);
        self.body.push('\n');
    }

    fn label(&mut self, l: &str) {
        self.body.push_str(l);
        self.body.push_str(":\n");
    }

    fn t(&mut self) -> String {
        self.nt += 1;
        format!("%t{}", self.nt - 1)
    }

    fn q(&mut self) -> String {
        self.nq += 1;
        format!("%q{}", self.nq - 1)
    }

    fn h(&mut self) -> String {
        self.nh += 1;
        format!("%h{}", self.nh - 1)
    }

    fn tf(&mut self) -> String {
        self.ntf += 1;
        format!("%tf{}", self.ntf - 1)
    }

    fn invalid(&self, what: impl Into<String>) -> EmitError {
        EmitError::Invalid {
            kernel: self.k.name.clone(),
            what: what.into(),
        }
    }

    fn unsupported(&self, what: impl Into<String>) -> EmitError {
        EmitError::Unsupported {
            kernel: self.k.name.clone(),
            what: what.into(),
        }
    }

    fn val_ty(&self, v: crate::kernel::Val) -> Result<DType, EmitError> {
        self.k
            .vals
            .get(v.0 as usize)
            .copied()
            .ok_or_else(|| self.invalid(format!("value {v} is not declared")))
    }

    fn val(&self, v: crate::kernel::Val) -> Result<String, EmitError> {
        Ok(reg(self.val_ty(v)?, v.0))
    }

    /// An s64 register holding the value of index expression `e`.
    fn ix(&mut self, e: &Ix) -> Result<String, EmitError> {
        let r = self.t();
        self.line(&format!("mov.s64 {r}, {};", e.c));
        for (a, k) in &e.terms {
            let x = self.atom(a)?;
            self.line(&format!("mad.lo.s64 {r}, {x}, {k}, {r};"));
        }
        Ok(r)
    }

    fn atom(&mut self, a: &Atom) -> Result<String, EmitError> {
        match a {
            Atom::Var(v) => match self.k.defs.get(v.0 as usize) {
                Some(Some(d)) => self.ix(d),
                Some(None) => Ok(format!("%i{}", v.0)),
                None => Err(self.invalid(format!("variable {v} is not declared"))),
            },
            Atom::Div(e, d) | Atom::Mod(e, d) => {
                if *d < 1 {
                    return Err(self.invalid(format!("index division by {d}")));
                }
                let x = self.ix(e)?;
                let (q, r, p, fix) = (self.t(), self.t(), self.q(), self.t());
                // Euclidean division by d > 0: truncate, then step down where the remainder
                // is negative.
                self.line(&format!("div.s64 {q}, {x}, {d};"));
                self.line(&format!("rem.s64 {r}, {x}, {d};"));
                self.line(&format!("setp.lt.s64 {p}, {r}, 0;"));
                if matches!(a, Atom::Div(..)) {
                    self.line(&format!("sub.s64 {fix}, {q}, 1;"));
                    self.line(&format!("selp.s64 {q}, {fix}, {q}, {p};"));
                    Ok(q)
                } else {
                    self.line(&format!("add.s64 {fix}, {r}, {d};"));
                    self.line(&format!("selp.s64 {r}, {fix}, {r}, {p};"));
                    Ok(r)
                }
            }
        }
    }

    /// A u64 register holding the address of element `index` of buffer `buf`.
    fn addr(&mut self, buf: crate::kernel::Buf, index: &Ix) -> Result<String, EmitError> {
        let p = self
            .k
            .params
            .get(buf.0 as usize)
            .ok_or_else(|| self.invalid(format!("buffer {buf} is not declared")))?;
        let size = p.dtype.size_of();
        let i = self.ix(index)?;
        let a = self.t();
        self.line(&format!("mad.lo.s64 {a}, {i}, {size}, %b{};", buf.0));
        Ok(a)
    }

    fn stmts(&mut self, stmts: &[Stmt]) -> Result<(), EmitError> {
        for s in stmts {
            self.stmt(s)?;
        }
        Ok(())
    }

    fn stmt(&mut self, s: &Stmt) -> Result<(), EmitError> {
        match s {
            Stmt::Loop(l) => {
                let n = self.labels;
                self.labels += 1;
                let i = format!("%i{}", l.var.0);
                let p = self.q();
                self.line(&format!("mov.s64 {i}, 0;"));
                self.label(&format!("$L_head{n}"));
                self.line(&format!("setp.ge.s64 {p}, {i}, {};", l.extent));
                self.line(&format!("@{p} bra $L_end{n};"));
                self.stmts(&l.body)?;
                self.line(&format!("add.s64 {i}, {i}, 1;"));
                self.line(&format!("bra.uni $L_head{n};"));
                self.label(&format!("$L_end{n}"));
            }
            Stmt::Let(v, op) => self.op(*v, op)?,
            Stmt::Store { buf, index, value } => {
                let d = self.val_ty(*value)?;
                let x = self.val(*value)?;
                let a = self.addr(*buf, index)?;
                if d == DType::Bool {
                    let h = self.h();
                    self.line(&format!("selp.u16 {h}, 1, 0, {x};"));
                    self.line(&format!("st.global.u8 [{a}], {h};"));
                } else {
                    self.line(&format!("st.global.{} [{a}], {x};", mem_ty(d)));
                }
            }
            Stmt::AccInit(a) => {
                let d = self.acc(*a)?;
                let r = acc_reg(d.dtype, a.0);
                let id = Scalar::identity(d.op, d.dtype);
                self.constant(&r, id);
            }
            Stmt::AccUpdate(a, v) => {
                let d = self.acc(*a)?;
                let r = acc_reg(d.dtype, a.0);
                let x = self.val(*v)?;
                let op = match d.op {
                    ReduceOp::Sum => BinaryOp::Add,
                    ReduceOp::Max => BinaryOp::Max,
                };
                self.binary(op, d.dtype, &r, &r, &x)?;
            }
        }
        Ok(())
    }

    fn acc(&self, a: crate::kernel::Acc) -> Result<crate::kernel::AccDecl, EmitError> {
        self.k
            .accs
            .get(a.0 as usize)
            .copied()
            .ok_or_else(|| self.invalid(format!("accumulator {a} is not declared")))
    }

    /// `mov` of a constant into register `r`.
    fn constant(&mut self, r: &str, s: Scalar) {
        match s {
            Scalar::F32(x) => self.line(&format!("mov.f32 {r}, {};", f32_imm(x))),
            Scalar::F64(x) => self.line(&format!("mov.f64 {r}, {};", f64_imm(x))),
            Scalar::I64(x) => self.line(&format!("mov.s64 {r}, {x};")),
            Scalar::Bool(b) => self.line(&format!("setp.ne.u32 {r}, %rzero, {};", u32::from(b))),
        }
    }

    fn op(&mut self, v: crate::kernel::Val, op: &KOp) -> Result<(), EmitError> {
        let d = self.val_ty(v)?;
        let r = reg(d, v.0);
        match op {
            KOp::Const(s) => {
                if s.dtype() != d {
                    return Err(self.invalid(format!("{v}: constant {s} is not {d}")));
                }
                self.constant(&r, *s);
            }
            KOp::Load { buf, index, guard } => {
                let a = self.addr(*buf, index)?;
                let access = self.k.params[buf.0 as usize].access;
                // Buffers the kernel only reads go through the read-only data cache.
                let ld = if access == Access::Read {
                    "ld.global.nc"
                } else {
                    "ld.global"
                };
                let pred = match guard {
                    Some(g) => Some(self.val(*g)?),
                    None => None,
                };
                let at = pred.map(|p| format!("@{p} ")).unwrap_or_default();
                if d == DType::Bool {
                    let h = self.h();
                    self.line(&format!("mov.u16 {h}, 0;"));
                    self.line(&format!("{at}{ld}.u8 {h}, [{a}];"));
                    self.line(&format!("setp.ne.u16 {r}, {h}, 0;"));
                } else {
                    if !at.is_empty() {
                        self.constant(&r, Scalar::from_f64(d, 0.0));
                    }
                    self.line(&format!("{at}{ld}.{} {r}, [{a}];", mem_ty(d)));
                }
            }
            KOp::Unary(u, a) => {
                let x = self.val(*a)?;
                self.unary(*u, d, &r, &x)?;
            }
            KOp::Binary(b, x, y) => {
                let (x, y) = (self.val(*x)?, self.val(*y)?);
                self.binary(*b, d, &r, &x, &y)?;
            }
            KOp::Compare(c, x, y) => {
                let dx = self.val_ty(*x)?;
                let (x, y) = (self.val(*x)?, self.val(*y)?);
                self.compare(*c, dx, &r, &x, &y);
            }
            KOp::Select(c, x, y) => {
                let (c, x, y) = (self.val(*c)?, self.val(*x)?, self.val(*y)?);
                if d == DType::Bool {
                    let (t1, t2) = (self.q(), self.q());
                    self.line(&format!("and.pred {t1}, {c}, {x};"));
                    self.line(&format!("not.pred {t2}, {c};"));
                    self.line(&format!("and.pred {t2}, {t2}, {y};"));
                    self.line(&format!("or.pred {r}, {t1}, {t2};"));
                } else {
                    self.line(&format!("selp.{} {r}, {x}, {y}, {c};", ty(d)));
                }
            }
            KOp::Cast(to, x) => {
                let from = self.val_ty(*x)?;
                let x = self.val(*x)?;
                if *to != d {
                    return Err(self.invalid(format!("{v}: cast to {to} stored as {d}")));
                }
                self.cast(from, d, &r, &x);
            }
            KOp::InRange { index, lo, hi } => {
                let i = self.ix(index)?;
                let p = self.q();
                self.line(&format!("setp.ge.s64 {p}, {i}, {lo};"));
                self.line(&format!("setp.lt.and.s64 {r}, {i}, {hi}, {p};"));
            }
            KOp::And(x, y) => {
                let (x, y) = (self.val(*x)?, self.val(*y)?);
                self.line(&format!("and.pred {r}, {x}, {y};"));
            }
            KOp::ReadAcc(a) => {
                let ad = self.acc(*a)?;
                let src = acc_reg(ad.dtype, a.0);
                if d == DType::Bool {
                    self.line(&format!("or.pred {r}, {src}, {src};"));
                } else {
                    self.line(&format!("mov.{} {r}, {src};", ty(d)));
                }
            }
        }
        Ok(())
    }

    fn unary(&mut self, u: UnaryOp, d: DType, r: &str, x: &str) -> Result<(), EmitError> {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2: f32 = std::f32::consts::LN_2;
        match (d, u) {
            (DType::F32 | DType::F64 | DType::I64, UnaryOp::Neg) => {
                self.line(&format!("neg.{} {r}, {x};", ty(d)))
            }
            (DType::F32 | DType::F64 | DType::I64, UnaryOp::Abs) => {
                self.line(&format!("abs.{} {r}, {x};", ty(d)))
            }
            (DType::F32 | DType::F64, UnaryOp::Sqrt) => {
                self.line(&format!("sqrt.rn.{} {r}, {x};", ty(d)))
            }
            (DType::F32 | DType::F64, UnaryOp::Recip) => {
                self.line(&format!("rcp.rn.{} {r}, {x};", ty(d)))
            }
            (DType::F32, UnaryOp::Exp) => {
                let t = self.tf();
                self.line(&format!("mul.f32 {t}, {x}, {};", f32_imm(LOG2E)));
                self.line(&format!("ex2.approx.f32 {r}, {t};"));
            }
            (DType::F32, UnaryOp::Log) => {
                let t = self.tf();
                self.line(&format!("lg2.approx.f32 {t}, {x};"));
                self.line(&format!("mul.f32 {r}, {t}, {};", f32_imm(LN2)));
            }
            (DType::F32, UnaryOp::Tanh) => self.line(&format!("tanh.approx.f32 {r}, {x};")),
            (DType::F32, UnaryOp::Sigmoid) => {
                let t = self.tf();
                self.line(&format!("mul.f32 {t}, {x}, {};", f32_imm(-LOG2E)));
                self.line(&format!("ex2.approx.f32 {t}, {t};"));
                self.line(&format!("add.f32 {t}, {t}, {};", f32_imm(1.0)));
                self.line(&format!("rcp.rn.f32 {r}, {t};"));
            }
            _ => return Err(self.unsupported(format!("{} on {d}", u_name(u)))),
        }
        Ok(())
    }

    fn binary(
        &mut self,
        b: BinaryOp,
        d: DType,
        r: &str,
        x: &str,
        y: &str,
    ) -> Result<(), EmitError> {
        let t = ty(d);
        match (d, b) {
            (DType::Bool, _) => {
                return Err(self.invalid(format!("{} on bool", b_name(b))));
            }
            (_, BinaryOp::Add) => self.line(&format!("add.{t} {r}, {x}, {y};")),
            (_, BinaryOp::Sub) => self.line(&format!("sub.{t} {r}, {x}, {y};")),
            (DType::I64, BinaryOp::Mul) => self.line(&format!("mul.lo.s64 {r}, {x}, {y};")),
            (_, BinaryOp::Mul) => self.line(&format!("mul.{t} {r}, {x}, {y};")),
            (DType::F32 | DType::F64, BinaryOp::Div) => {
                self.line(&format!("div.rn.{t} {r}, {x}, {y};"))
            }
            (DType::I64, BinaryOp::Max | BinaryOp::Min) => {
                let m = if b == BinaryOp::Max { "max" } else { "min" };
                self.line(&format!("{m}.s64 {r}, {x}, {y};"));
            }
            (DType::F32 | DType::F64, BinaryOp::Max | BinaryOp::Min) => {
                // PyTorch's maximum/minimum: NaN if either operand is NaN (x + y is then NaN).
                let m = if b == BinaryOp::Max { "max" } else { "min" };
                let (p, s, mm) = (self.q(), self.tmp_float(d), self.tmp_float(d));
                self.line(&format!("setp.nan.{t} {p}, {x}, {y};"));
                self.line(&format!("add.{t} {s}, {x}, {y};"));
                self.line(&format!("{m}.{t} {mm}, {x}, {y};"));
                self.line(&format!("selp.{t} {r}, {s}, {mm}, {p};"));
            }
            (DType::F32, BinaryOp::Pow) => self.pow_f32(r, x, y),
            _ => return Err(self.unsupported(format!("{} on {d}", b_name(b)))),
        }
        Ok(())
    }

    fn tmp_float(&mut self, d: DType) -> String {
        if d == DType::F64 {
            self.ntd += 1;
            format!("%td{}", self.ntd - 1)
        } else {
            self.tf()
        }
    }

    /// `x^y` in f32: `2^(y log2|x|)`, with the sign and NaN rules of `powf` for negative `x`
    /// (odd integer `y`: negative; non-integer `y`: NaN) and `x^0 = 1`.
    fn pow_f32(&mut self, r: &str, x: &str, y: &str) {
        let (ax, l, yi, h, hi) = (self.tf(), self.tf(), self.tf(), self.tf(), self.tf());
        let (neg, int, odd, zero) = (self.q(), self.q(), self.q(), self.q());
        self.line(&format!("abs.f32 {ax}, {x};"));
        self.line(&format!("lg2.approx.f32 {l}, {ax};"));
        self.line(&format!("mul.f32 {l}, {l}, {y};"));
        self.line(&format!("ex2.approx.f32 {r}, {l};"));
        self.line(&format!("cvt.rni.f32.f32 {yi}, {y};"));
        self.line(&format!("setp.eq.f32 {int}, {yi}, {y};"));
        self.line(&format!("mul.f32 {h}, {y}, {};", f32_imm(0.5)));
        self.line(&format!("cvt.rni.f32.f32 {hi}, {h};"));
        self.line(&format!("setp.ne.and.f32 {odd}, {hi}, {h}, {int};"));
        self.line(&format!("setp.lt.f32 {neg}, {x}, {};", f32_imm(0.0)));
        // Negative base, odd integer exponent: negate.
        self.line(&format!("and.pred {odd}, {odd}, {neg};"));
        self.line(&format!("@{odd} neg.f32 {r}, {r};"));
        // Negative base, non-integer exponent: NaN.
        self.line(&format!("not.pred {int}, {int};"));
        self.line(&format!("and.pred {int}, {int}, {neg};"));
        self.line(&format!("@{int} mov.f32 {r}, {};", f32_imm(f32::NAN)));
        self.line(&format!("setp.eq.f32 {zero}, {y}, {};", f32_imm(0.0)));
        self.line(&format!("@{zero} mov.f32 {r}, {};", f32_imm(1.0)));
    }

    fn compare(&mut self, c: CmpOp, d: DType, r: &str, x: &str, y: &str) {
        if d == DType::Bool {
            // false < true.
            let t = self.q();
            match c {
                CmpOp::Eq => {
                    self.line(&format!("xor.pred {t}, {x}, {y};"));
                    self.line(&format!("not.pred {r}, {t};"));
                }
                CmpOp::Ne => self.line(&format!("xor.pred {r}, {x}, {y};")),
                CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge => {
                    // lt: !x & y; le: !x | y; gt: x & !y; ge: x | !y.
                    let (neg, other) = match c {
                        CmpOp::Lt | CmpOp::Le => (x, y),
                        _ => (y, x),
                    };
                    let comb = if matches!(c, CmpOp::Lt | CmpOp::Gt) {
                        "and"
                    } else {
                        "or"
                    };
                    self.line(&format!("not.pred {t}, {neg};"));
                    self.line(&format!("{comb}.pred {r}, {t}, {other};"));
                }
            }
            return;
        }
        // Rust's float comparisons: all false on NaN except `!=`.
        let cmp = match (c, d) {
            (CmpOp::Eq, _) => "eq",
            (CmpOp::Ne, DType::I64) => "ne",
            (CmpOp::Ne, _) => "neu",
            (CmpOp::Lt, _) => "lt",
            (CmpOp::Le, _) => "le",
            (CmpOp::Gt, _) => "gt",
            (CmpOp::Ge, _) => "ge",
        };
        self.line(&format!("setp.{cmp}.{} {r}, {x}, {y};", ty(d)));
    }

    fn cast(&mut self, from: DType, to: DType, r: &str, x: &str) {
        use DType::*;
        let line = match (from, to) {
            (Bool, Bool) => format!("or.pred {r}, {x}, {x};"),
            (F32, F32) | (F64, F64) | (I64, I64) => format!("mov.{} {r}, {x};", ty(from)),
            (F32, F64) => format!("cvt.f64.f32 {r}, {x};"),
            (F64, F32) => format!("cvt.rn.f32.f64 {r}, {x};"),
            (F32 | F64, I64) => format!("cvt.rzi.s64.{} {r}, {x};", ty(from)),
            (I64, F32 | F64) => format!("cvt.rn.{}.s64 {r}, {x};", ty(to)),
            (F32, Bool) => format!("setp.neu.f32 {r}, {x}, {};", f32_imm(0.0)),
            (F64, Bool) => format!("setp.neu.f64 {r}, {x}, {};", f64_imm(0.0)),
            (I64, Bool) => format!("setp.ne.s64 {r}, {x}, 0;"),
            (Bool, F32) => format!("selp.f32 {r}, {}, {}, {x};", f32_imm(1.0), f32_imm(0.0)),
            (Bool, F64) => format!("selp.f64 {r}, {}, {}, {x};", f64_imm(1.0), f64_imm(0.0)),
            (Bool, I64) => format!("selp.s64 {r}, 1, 0, {x};"),
        };
        self.line(&line);
    }

    /// The module: header, entry with its parameters, register declarations, body.
    fn finish(&self, target: Target, entry: &str, mapping: &Mapping) -> String {
        let k = self.k;
        let mut s = String::new();
        let _ = writeln!(s, "//");
        let _ = writeln!(
            s,
            "// kiln PTX for kernel {} ({}); mapping: {}",
            k.name,
            target.name(),
            match mapping {
                Mapping::Single => "single thread".to_string(),
                Mapping::GridStride { loops, total } => format!(
                    "grid-stride over {} ({total} indices)",
                    loops
                        .iter()
                        .map(|(v, e)| format!("{v}<{e}"))
                        .collect::<Vec<_>>()
                        .join(" x ")
                ),
            }
        );
        let _ = writeln!(s, "//");
        let _ = writeln!(s, ".version {}", target.isa_version());
        let _ = writeln!(s, ".target {}", target.name());
        let _ = writeln!(s, ".address_size 64");
        let _ = writeln!(s);
        for (i, p) in k.params.iter().enumerate() {
            let _ = writeln!(
                s,
                "// b{i}: {}[{}] {:?} ; {}",
                p.dtype, p.len, p.access, p.label
            );
        }
        let params: Vec<String> = (0..k.params.len())
            .map(|i| format!("\t.param .u64 {entry}_b{i}"))
            .collect();
        let _ = writeln!(s, ".visible .entry {entry}(\n{}\n)", params.join(",\n"));
        let (_, block) = mapping.launch(MAX_GRID);
        let _ = writeln!(s, ".maxntid {block}, 1, 1\n{{");
        let mut decl = |t: &str, prefix: &str, n: usize| {
            if n > 0 {
                let _ = writeln!(s, "\t.reg .{t} %{prefix}<{n}>;");
            }
        };
        let count = |d: DType| k.vals.iter().filter(|&&v| v == d).count();
        let nv = k.vals.len();
        decl("f32", "f", if count(DType::F32) > 0 { nv } else { 0 });
        decl("f64", "d", if count(DType::F64) > 0 { nv } else { 0 });
        decl("s64", "l", if count(DType::I64) > 0 { nv } else { 0 });
        decl("pred", "p", if count(DType::Bool) > 0 { nv } else { 0 });
        let na = k.accs.len();
        let acount = |d: DType| k.accs.iter().filter(|a| a.dtype == d).count();
        decl("f32", "af", if acount(DType::F32) > 0 { na } else { 0 });
        decl("f64", "ad", if acount(DType::F64) > 0 { na } else { 0 });
        decl("s64", "al", if acount(DType::I64) > 0 { na } else { 0 });
        decl("pred", "ap", if acount(DType::Bool) > 0 { na } else { 0 });
        decl("s64", "i", k.vars.len());
        decl("u64", "b", k.params.len());
        decl("s64", "t", self.nt as usize);
        decl("pred", "q", self.nq as usize);
        decl("u16", "h", self.nh as usize);
        decl("u32", "r", self.nr as usize);
        decl("f32", "tf", self.ntf as usize);
        decl("f64", "td", self.ntd as usize);
        let _ = writeln!(s, "\t.reg .u32 %rzero;");
        let _ = writeln!(s, "\t.reg .u64 %flat, %step, %rest;");
        let _ = writeln!(s);
        let _ = writeln!(s, "\tmov.u32 %rzero, 0;");
        for i in 0..k.params.len() {
            let _ = writeln!(s, "\tld.param.u64 %b{i}, [{entry}_b{i}];");
            let _ = writeln!(s, "\tcvta.to.global.u64 %b{i}, %b{i};");
        }
        s.push_str(&self.body);
        s.push_str("}\n");
        s
    }
}

/// The PTX type of a value in memory (bools are bytes, handled separately).
fn mem_ty(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::I64 => "s64",
        DType::Bool => "u8",
    }
}

fn u_name(u: UnaryOp) -> &'static str {
    crate::kernel::print::unary_name(u)
}

fn b_name(b: BinaryOp) -> &'static str {
    crate::kernel::print::binary_name(b)
}
