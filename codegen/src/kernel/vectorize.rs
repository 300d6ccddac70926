//! Chooses which innermost loops the JIT runs on 128-bit vectors.
//!
//! Cranelift's x64 backend lowers vectors of at most 128 bits, so a loop is vectorised with
//! 4 lanes (f32, with bools as 32-bit masks) or 2 lanes (f64). A loop qualifies when:
//! - it is innermost and its body only computes values, stores and updates accumulators;
//! - every value is of one float width (plus bools): mixing f32 with f64 would need two
//!   vector registers per value, and `i64` kernels (class indices, rare and small) stay
//!   scalar, since x64 lacks most 64-bit integer vector instructions;
//! - every store advances with the loop variable (coefficient 1 to 64), so the lanes write
//!   distinct elements: adjacent ones as one vector store, strided ones (a loop split into
//!   residue classes) lane by lane; a buffer both read and written in the loop is read only at
//!   the stored index (an accumulation into the output), so no lane reads another's write.
//!
//! Loads may have any index: contiguous ones become vector loads, loop-invariant ones a splat,
//! the others a gather of scalar loads. The JIT runs the remaining `extent % lanes`
//! iterations as a scalar tail.

use super::*;

/// Marks the innermost loops of `k` that the JIT can vectorise.
pub fn vectorize(k: &mut Kernel) {
    let vals = k.vals.clone();
    let accs = k.accs.clone();
    if let Body::Loops(stmts) = &mut k.body {
        for s in stmts {
            mark(s, &vals, &accs);
        }
    }
}

fn mark(s: &mut Stmt, vals: &[DType], accs: &[AccDecl]) {
    let Stmt::Loop(l) = s else {
        return;
    };
    if l.body.iter().any(|s| matches!(s, Stmt::Loop(_))) {
        for s in &mut l.body {
            mark(s, vals, accs);
        }
        return;
    }
    let lanes = lanes_for(l, vals, accs);
    if lanes > 1 && l.extent >= lanes as u64 {
        l.vector = lanes;
    }
}

/// The lane count for an innermost loop, or 1 if it must stay scalar.
fn lanes_for(l: &Loop, vals: &[DType], accs: &[AccDecl]) -> u32 {
    let (mut f32s, mut f64s) = (false, false);
    let mut note = |d: DType| match d {
        DType::F32 => {
            f32s = true;
            true
        }
        DType::F64 => {
            f64s = true;
            true
        }
        DType::Bool => true,
        DType::I64 => false,
    };
    let mut stores: Vec<(Buf, &Ix)> = Vec::new();
    for s in &l.body {
        match s {
            Stmt::Let(v, op) => {
                if !note(vals[v.0 as usize]) || matches!(op, KOp::ReadAcc(_)) {
                    return 1;
                }
            }
            Stmt::Store { buf, index, .. } => {
                if !matches!(index.linear_coef(l.var), Some(1..=64)) {
                    return 1;
                }
                stores.push((*buf, index));
            }
            Stmt::AccUpdate(a, _) => {
                if !note(accs[a.0 as usize].dtype) {
                    return 1;
                }
            }
            Stmt::AccInit(_) | Stmt::Loop(_) => return 1,
        }
    }
    // A buffer read and written in the loop: only at the stored index.
    for s in &l.body {
        if let Stmt::Let(_, KOp::Load { buf, index, .. }) = s {
            let written: Vec<&Ix> = stores
                .iter()
                .filter(|(b, _)| b == buf)
                .map(|(_, i)| *i)
                .collect();
            if !written.is_empty() && written.iter().any(|w| *w != index) {
                return 1;
            }
        }
    }
    match (f32s, f64s) {
        (true, true) => 1,
        (false, true) => 2,
        _ => 4,
    }
}
