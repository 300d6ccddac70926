//! Times one small graph (a debugging aid): `micro <case>`.
use kiln_codegen::Program;
use kiln_ir::{DType, Graph, Literal, NodeId, ReduceOp, TensorType};
use std::collections::HashMap;
use std::time::Instant;

fn main() {
    let case = std::env::args().nth(1).unwrap_or_default();
    let mut g = Graph::new();
    let x = g
        .input("x", TensorType::new(DType::F32, vec![64, 6, 28, 28]))
        .unwrap();
    let y = match case.as_str() {
        "sum_last" => g.reduce(ReduceOp::Sum, x, vec![3]).unwrap(),
        "sum_all" => g.reduce(ReduceOp::Sum, x, vec![0, 1, 2, 3]).unwrap(),
        "exp" => g.unary(kiln_ir::UnaryOp::Exp, x).unwrap(),
        "add" => g.add(x, x).unwrap(),
        _ => g.reduce(ReduceOp::Sum, x, vec![0, 2, 3]).unwrap(),
    };
    let lit = Literal::from_f64(vec![64, 6, 28, 28], DType::F32, &vec![0.5; 301056]);
    let b: HashMap<NodeId, &Literal> = [(x, &lit)].into_iter().collect();
    let p = Program::compile(&g, &[y], &[x]).unwrap();
    p.run(&b).unwrap();
    let t = Instant::now();
    for _ in 0..100 {
        p.run(&b).unwrap();
    }
    println!("{case}: {:.1} µs", t.elapsed().as_secs_f64() * 1e4);
}
