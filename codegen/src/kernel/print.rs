//! The text form of kernels, for `KILN_DUMP=kernels` and the golden tests.
//!
//! ```text
//! kernel k2_tanh {
//!   b0: f32[40] read   ; %3 f32[4,10]
//!   b1: f32[40] write  ; %5 f32[4,10]
//!   for i0 in 0..4 parallel {
//!     for i1 in 0..10 vector 4 {
//!       v0: f32 = load b0[i0*10 + i1]
//!       v1: f32 = tanh v0
//!       store b1[i0*10 + i1] = v1
//!     }
//!   }
//! }
//! ```

use super::*;
use std::fmt::{self, Write};

impl fmt::Display for Buf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl fmt::Display for Acc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "acc{}", self.0)
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::F32(v) => f.write_str(&kiln_ir::text::fmt_f32(*v)),
            Scalar::F64(v) => f.write_str(&kiln_ir::text::fmt_f64(*v)),
            Scalar::I64(v) => write!(f, "{v}"),
            Scalar::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// The mnemonic of a unary op, as in the graph IR's text form.
pub fn unary_name(u: UnaryOp) -> &'static str {
    kiln_ir::Op::Unary(u).name()
}

/// The mnemonic of a binary op.
pub fn binary_name(b: BinaryOp) -> &'static str {
    kiln_ir::Op::Binary(b).name()
}

/// The mnemonic of a comparison.
pub fn compare_name(c: CmpOp) -> &'static str {
    kiln_ir::Op::Compare(c).name()
}

impl fmt::Display for KOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KOp::Const(s) => write!(f, "const {s}"),
            KOp::Load { buf, index, guard } => {
                write!(f, "load {buf}[{index}]")?;
                if let Some(g) = guard {
                    write!(f, " if {g}")?;
                }
                Ok(())
            }
            KOp::Unary(u, a) => write!(f, "{} {a}", unary_name(*u)),
            KOp::Binary(b, x, y) => write!(f, "{} {x}, {y}", binary_name(*b)),
            KOp::Compare(c, x, y) => write!(f, "{} {x}, {y}", compare_name(*c)),
            KOp::Select(c, x, y) => write!(f, "select {c}, {x}, {y}"),
            KOp::Cast(d, x) => write!(f, "cast {x} to {d}"),
            KOp::InRange { index, lo, hi } => write!(f, "inrange {lo} <= {index} < {hi}"),
            KOp::And(x, y) => write!(f, "and {x}, {y}"),
            KOp::ReadAcc(a) => write!(f, "read {a}"),
        }
    }
}

impl fmt::Display for Contraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |f: &mut fmt::Formatter<'_>, p: &ConvParams| {
            write!(
                f,
                " stride={:?} padding={:?} dilation={:?} groups={} output_padding={:?}",
                p.stride, p.padding, p.dilation, p.groups, p.output_padding
            )
        };
        match self {
            Contraction::MatMul { batch, m, k, n } => {
                write!(f, "matmul batch={batch} m={m} k={k} n={n}")
            }
            Contraction::Conv { x, w, y, params } => {
                write!(f, "conv x={x:?} w={w:?} y={y:?}")?;
                p(f, params)
            }
            Contraction::ConvTranspose { x, w, y, params } => {
                write!(f, "conv_transpose x={x:?} w={w:?} y={y:?}")?;
                p(f, params)
            }
            Contraction::ConvWeight { x, dy, dw, params } => {
                write!(f, "conv_weight x={x:?} dy={dy:?} dw={dw:?}")?;
                p(f, params)
            }
        }
    }
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::Read => "read",
        Access::Write => "write",
        Access::ReadWrite => "readwrite",
    }
}

fn write_stmts(out: &mut String, k: &Kernel, stmts: &[Stmt], depth: usize) -> fmt::Result {
    for s in stmts {
        let pad = "  ".repeat(depth);
        match s {
            Stmt::Loop(l) => {
                write!(out, "{pad}for {} in 0..{}", l.var, l.extent)?;
                if l.parallel {
                    out.push_str(" parallel");
                }
                if l.vector > 1 {
                    write!(out, " vector {}", l.vector)?;
                }
                out.push_str(" {\n");
                write_stmts(out, k, &l.body, depth + 1)?;
                writeln!(out, "{pad}}}")?;
            }
            Stmt::Let(v, op) => {
                let ty = k.vals.get(v.0 as usize).map_or("?", |d| d.name());
                writeln!(out, "{pad}{v}: {ty} = {op}")?;
            }
            Stmt::Store { buf, index, value } => {
                writeln!(out, "{pad}store {buf}[{index}] = {value}")?;
            }
            Stmt::AccInit(a) => {
                let d = k.accs[a.0 as usize];
                let op = match d.op {
                    ReduceOp::Sum => "sum",
                    ReduceOp::Max => "max",
                };
                writeln!(out, "{pad}{a}: {} = init {op}", d.dtype)?;
            }
            Stmt::AccUpdate(a, v) => writeln!(out, "{pad}{a} <- {v}")?,
        }
    }
    Ok(())
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        writeln!(out, "kernel {} {{", self.name)?;
        for (i, p) in self.params.iter().enumerate() {
            let head = format!("b{i}: {}[{}] {}", p.dtype, p.len, access_name(p.access));
            writeln!(out, "  {head:<26} ; {}", p.label)?;
        }
        for (i, d) in self.defs.iter().enumerate() {
            if let Some(d) = d {
                writeln!(out, "  i{i} = {d}  ; in 0..{} where used", self.vars[i])?;
            }
        }
        match &self.body {
            Body::Loops(stmts) => write_stmts(&mut out, self, stmts, 1)?,
            Body::Call(c) => writeln!(
                out,
                "  call {} {} ({}, {}) -> {}",
                c.op, c.dtype, c.inputs[0], c.inputs[1], c.output
            )?,
        }
        out.push_str("}\n");
        f.write_str(&out)
    }
}
