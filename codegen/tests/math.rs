//! Accuracy of the JIT's inline f32 `exp`, `log`, `tanh` and `sigmoid` (Cephes polynomials),
//! in ulps against the correctly rounded `f64` result, over a sweep of the whole range plus the
//! special values (zeros, subnormals, infinities, NaN). Vector lanes and the scalar tail both
//! run (the length is not a multiple of 4).

use kiln_codegen::Program;
use kiln_ir::{DType, Data, Graph, Literal, TensorType, UnaryOp};
use std::collections::HashMap;

/// Distance in units of the last place between two finite f32 of any sign.
fn ulps(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i64::from(i32::MIN) - i64::from(i)
        } else {
            i64::from(i)
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

fn sweep(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n)
        .map(|i| lo + (hi - lo) * (i as f32) / (n as f32 - 1.0))
        .collect();
    v.extend([
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::MIN_POSITIVE,
        f32::MIN_POSITIVE / 3.0,
        1e-40,
        -1e-40,
        1e-30,
        1e-7,
        -1e-7,
        0.5,
        0.625,
        -0.625,
        0.7,
        88.7,
        88.72,
        88.73,
        -87.3,
        -103.9,
        -104.0,
        1e10,
        -1e10,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        3.0,
    ]);
    v
}

/// Max ulp error of the JIT's `u` on `xs` against `reference` (NaN and infinities exact).
fn max_ulps(u: UnaryOp, xs: &[f32], reference: fn(f64) -> f64) -> u64 {
    let mut g = Graph::new();
    let x = g
        .input("x", TensorType::new(DType::F32, vec![xs.len()]))
        .unwrap();
    let y = g.unary(u, x).unwrap();
    let lit = Literal::new(vec![xs.len()], Data::F32(xs.to_vec())).unwrap();
    let p = Program::compile(&g, &[y], &[x]).unwrap();
    let out = p.run(&HashMap::from([(x, &lit)])).unwrap().remove(0);
    let Data::F32(got) = out.data else {
        panic!("f32 expected")
    };
    let mut worst = 0;
    for (&xv, &gv) in xs.iter().zip(&got) {
        let want = reference(f64::from(xv)) as f32;
        if want.is_nan() || gv.is_nan() || want.is_infinite() || gv.is_infinite() {
            assert!(
                (want.is_nan() && gv.is_nan()) || want == gv,
                "{u:?}({xv:e}) = {gv:e}, want {want:e}"
            );
            continue;
        }
        let e = ulps(gv, want);
        // Results that round to subnormals carry absolute, not relative, precision.
        let e = if want.abs() < f32::MIN_POSITIVE {
            e.min(1)
        } else {
            e
        };
        assert!(e <= 4, "{u:?}({xv:e}) = {gv:e}, want {want:e}: {e} ulps");
        worst = worst.max(e);
    }
    worst
}

#[test]
fn exp_is_accurate() {
    let w = max_ulps(UnaryOp::Exp, &sweep(-105.0, 89.0, 20_001), f64::exp);
    eprintln!("exp: max {w} ulps");
    assert!(w <= 2, "exp: {w} ulps");
}

#[test]
fn log_is_accurate() {
    let mut xs = sweep(0.0, 50.0, 10_001);
    xs.extend(sweep(1e-6, 2.0, 10_001));
    xs.extend((-140..127).map(|e| 1.7f32 * 2f32.powi(e)));
    xs.push(-1.0);
    let w = max_ulps(UnaryOp::Log, &xs, f64::ln);
    eprintln!("log: max {w} ulps");
    assert!(w <= 2, "log: {w} ulps");
}

#[test]
fn tanh_is_accurate() {
    let mut xs = sweep(-12.0, 12.0, 20_001);
    xs.extend(sweep(-1.0, 1.0, 10_001));
    let w = max_ulps(UnaryOp::Tanh, &xs, f64::tanh);
    eprintln!("tanh: max {w} ulps");
    assert!(w <= 3, "tanh: {w} ulps");
}

#[test]
fn sigmoid_is_accurate() {
    let w = max_ulps(UnaryOp::Sigmoid, &sweep(-100.0, 40.0, 20_001), |x| {
        1.0 / (1.0 + (-x).exp())
    });
    eprintln!("sigmoid: max {w} ulps");
    assert!(w <= 3, "sigmoid: {w} ulps");
}
