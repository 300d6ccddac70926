//! Shared helpers of the codegen tests: deterministic random values, tolerant comparison, and
//! running one graph on the reference interpreter, the JIT and the kernel IR interpreter.
#![allow(dead_code)]

pub mod gen;

use kiln_codegen::Program;
use kiln_ir::{DType, Data, Graph, Literal, NodeId};
use std::collections::HashMap;

/// xorshift64*: deterministic, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.unit() + 1.0) / 2.0 < p
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// Random values of a type: floats in [-scale, scale), small integers, coin-flip bools.
pub fn random_literal(rng: &mut Rng, dtype: DType, shape: &[usize], scale: f64) -> Literal {
    let n: usize = shape.iter().product();
    let data = match dtype {
        DType::F32 => Data::F32((0..n).map(|_| (rng.unit() * scale) as f32).collect()),
        DType::F64 => Data::F64((0..n).map(|_| rng.unit() * scale).collect()),
        DType::I64 => Data::I64((0..n).map(|_| rng.below(11) as i64 - 5).collect()),
        DType::Bool => Data::Bool((0..n).map(|_| rng.chance(0.5)).collect()),
    };
    Literal::new(shape.to_vec(), data).unwrap()
}

/// Compares `got` with `want`: exact for i64 and bool; for floats
/// `|got - want| <= tol * max(1e-30, max |want|)` element-wise, NaN matching NaN and
/// infinities matching exactly.
pub fn compare(got: &Literal, want: &Literal, tol: f64) -> Result<(), String> {
    if got.shape != want.shape || got.dtype() != want.dtype() {
        return Err(format!(
            "type {}{:?} vs {}{:?}",
            got.dtype(),
            got.shape,
            want.dtype(),
            want.shape
        ));
    }
    match (&got.data, &want.data) {
        (Data::I64(a), Data::I64(b)) => {
            if a != b {
                return Err(format!("i64 differ: {a:?} vs {b:?}"));
            }
        }
        (Data::Bool(a), Data::Bool(b)) => {
            if a != b {
                let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap();
                return Err(format!("bool differ at {i}: {a:?} vs {b:?}"));
            }
        }
        _ => {
            let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
            let scale = w
                .iter()
                .filter(|x| x.is_finite())
                .fold(0.0f64, |m, x| m.max(x.abs()))
                .max(1e-30);
            for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
                let ok = if b.is_nan() {
                    a.is_nan()
                } else if b.is_infinite() || a.is_infinite() {
                    a == b || (a - b).abs() <= tol * scale
                } else {
                    (a - b).abs() <= tol * scale
                };
                if !ok {
                    return Err(format!(
                        "element {i}: got {a}, want {b} (scale {scale}, tol {tol})"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Runs `wanted` of `graph` on the reference interpreter, the compiled program and the kernel
/// interpreter; returns an error describing the first disagreement beyond `tol`.
pub fn check(
    graph: &Graph,
    bindings: &HashMap<NodeId, &Literal>,
    wanted: &[NodeId],
    tol: f64,
) -> Result<(), String> {
    let want =
        kiln_ir::interp::eval(graph, bindings, wanted).map_err(|e| format!("interp: {e}"))?;
    let mut bound: Vec<NodeId> = bindings.keys().copied().collect();
    bound.sort();
    let prog = Program::compile(graph, wanted, &bound).map_err(|e| format!("compile: {e}"))?;
    let ctx = |what: &str, i: usize, e: String| {
        format!(
            "{what}, result {i}: {e}\n--- graph\n{}\n--- schedule\n{}\n--- kernels\n{}",
            kiln_ir::text::print(graph),
            prog.schedule_text(),
            prog.kernels_text()
        )
    };
    let kint = prog
        .run_interpreted(bindings)
        .map_err(|e| ctx("kernel interpreter", 0, e.to_string()))?;
    for (i, (g, w)) in kint.iter().zip(&want).enumerate() {
        compare(g, w, tol).map_err(|e| ctx("kernel interpreter", i, e))?;
    }
    let got = prog
        .run(bindings)
        .map_err(|e| ctx("jit run", 0, e.to_string()))?;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        compare(g, w, tol).map_err(|e| ctx("jit", i, e))?;
    }
    Ok(())
}
