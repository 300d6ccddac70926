mod common;
use common::*;
use kiln_ir::{BinaryOp, DType, Graph, ReduceOp, TensorType, UnaryOp};
use std::collections::HashMap;

#[test]
fn add_tanh_sum_matmul() {
    let mut rng = Rng::new(1);
    let mut g = Graph::new();
    let t = TensorType::new(DType::F32, vec![5, 7]);
    let x = g.input("x", t.clone()).unwrap();
    let y = g.input("y", t.clone()).unwrap();
    let a = g.binary(BinaryOp::Add, x, y).unwrap();
    let b = g.unary(UnaryOp::Tanh, a).unwrap();
    let s = g.reduce(ReduceOp::Sum, b, vec![1]).unwrap();
    let s0 = g.reduce(ReduceOp::Sum, b, vec![0]).unwrap();
    let yt = g.transpose_last(y).unwrap();
    let m = g.matmul(b, yt).unwrap();
    let e = g.unary(UnaryOp::Exp, m).unwrap();
    let xl = random_literal(&mut rng, DType::F32, &[5, 7], 2.0);
    let yl = random_literal(&mut rng, DType::F32, &[5, 7], 2.0);
    let binds: HashMap<_, _> = [(x, &xl), (y, &yl)].into_iter().collect();
    check(&g, &binds, &[b, s, s0, m, e], 1e-5).unwrap();
}
