//! The graph passes inside `Program::compile`: they run on a copy of the needed nodes before
//! scheduling, so they shrink the program, but bound nodes (whatever their op) keep their
//! run-time values, wanted nodes are still delivered in the order asked, and a cache hit
//! reuses the optimised program. Expected values are worked out by hand from the inputs.

use kiln_codegen::Program;
use kiln_ir::{DType, Data, Graph, Literal, NodeId, TensorType};
use std::collections::HashMap;

fn t23() -> TensorType {
    TensorType::new(DType::F32, vec![2, 3])
}

fn lit(v: Vec<f32>) -> Literal {
    Literal::new(vec![2, 3], Data::F32(v)).unwrap()
}

fn values(l: &Literal) -> Vec<f32> {
    match &l.data {
        Data::F32(v) => v.clone(),
        d => panic!("expected f32, got {d:?}"),
    }
}

/// `x*1 + x*1` (a duplicate for CSE, identities for the simplifier) and a dead `exp(x)`.
fn redundant() -> (Graph, NodeId, NodeId) {
    let mut g = Graph::new();
    let x = g.input("x", t23()).unwrap();
    let one = g.full(1.0, t23()).unwrap();
    let a = g.mul(x, one).unwrap();
    let b = g.mul(x, one).unwrap();
    let s = g.add(a, b).unwrap();
    let _dead = g.unary(kiln_ir::UnaryOp::Exp, x).unwrap();
    (g, x, s)
}

#[test]
fn passes_shrink_the_program_and_keep_its_results() {
    let (g, x, s) = redundant();
    let p = Program::compile(&g, &[s, x], &[x]).unwrap();
    let r = p.pass_report().expect("the passes ran");
    assert!(r.nodes_after < r.nodes_before, "{r}");
    // x*1 + x*1 needs x and one add (x + x) at most.
    assert!(r.nodes_after <= 2, "{r}");
    let xv = lit(vec![1.0, -2.0, 3.5, 0.0, 10.0, -0.25]);
    let out = p.run(&HashMap::from([(x, &xv)])).unwrap();
    assert_eq!(values(&out[0]), vec![2.0, -4.0, 7.0, 0.0, 20.0, -0.5]);
    assert_eq!(values(&out[1]), values(&xv));
}

#[test]
fn a_bound_node_keeps_its_value_even_if_the_passes_could_fold_it() {
    // y = 2 * 3 would fold to 6, but y is bound: its value is whatever the caller gives.
    let mut g = Graph::new();
    let x = g.input("x", t23()).unwrap();
    let two = g.full(2.0, t23()).unwrap();
    let three = g.full(3.0, t23()).unwrap();
    let y = g.mul(two, three).unwrap();
    let z = g.add(x, y).unwrap();
    let p = Program::compile(&g, &[z, y], &[x, y]).unwrap();
    let xv = lit(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let yv = lit(vec![7.0; 6]);
    let out = p.run(&HashMap::from([(x, &xv), (y, &yv)])).unwrap();
    assert_eq!(values(&out[0]), vec![8.0, 9.0, 10.0, 11.0, 12.0, 13.0]);
    assert_eq!(values(&out[1]), vec![7.0; 6]);
}

#[test]
fn a_bound_node_the_passes_make_unneeded_may_still_be_bound() {
    // i64: `k * 0` folds to 0 for integers, so the bound `k` is no longer read.
    let ti = TensorType::new(DType::I64, vec![2]);
    let mut g = Graph::new();
    let k = g.input("k", ti.clone()).unwrap();
    let zero = g.full(0.0, ti.clone()).unwrap();
    let m = g.mul(k, zero).unwrap();
    let one = g.full(1.0, ti).unwrap();
    let r = g.add(m, one).unwrap();
    let p = Program::compile(&g, &[r], &[k]).unwrap();
    let kv = Literal::new(vec![2], Data::I64(vec![5, -9])).unwrap();
    let out = p.run(&HashMap::from([(k, &kv)])).unwrap();
    assert_eq!(out[0].data, Data::I64(vec![1, 1]));
    // A wrongly typed binding of it is still an error.
    let bad = Literal::new(vec![3], Data::I64(vec![1, 2, 3])).unwrap();
    assert!(p.run(&HashMap::from([(k, &bad)])).is_err());
}

#[test]
fn a_cache_hit_reuses_the_optimised_program_for_new_node_ids() {
    let (g1, x1, s1) = redundant();
    // The same structure with other ids: an unrelated node first shifts every id.
    let mut g2 = Graph::new();
    let _pad = g2.input("unrelated", t23()).unwrap();
    let x2 = g2.input("x", t23()).unwrap();
    let one = g2.full(1.0, t23()).unwrap();
    let a = g2.mul(x2, one).unwrap();
    let b = g2.mul(x2, one).unwrap();
    let s2 = g2.add(a, b).unwrap();
    let _dead = g2.unary(kiln_ir::UnaryOp::Exp, x2).unwrap();
    assert_ne!(x1, x2);
    let p1 = Program::compile(&g1, &[s1], &[x1]).unwrap();
    let p2 = Program::compile(&g2, &[s2], &[x2]).unwrap();
    assert_eq!(p1.id(), p2.id());
    let xv = lit(vec![0.5; 6]);
    let out = p2.run(&HashMap::from([(x2, &xv)])).unwrap();
    assert_eq!(values(&out[0]), vec![1.0; 6]);
    // Bound by the other graph's id: refused.
    assert!(p2.run(&HashMap::from([(x1, &xv)])).is_err());
}
