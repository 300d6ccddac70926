//! Differential testing: random graphs compiled by the JIT (and run in the kernel IR
//! interpreter) against the reference interpreter of kiln-ir.
//!
//! A seeded generator builds each graph from random ops over the whole op set (elementwise,
//! compare/where/cast, reductions, every movement op, matmul and the conv family), random
//! shapes with sizes of 1 and odd sizes, broadcasting through reshape+expand, and sometimes a
//! bound interior node (the generator is `common/gen.rs`, shared with `ptx.rs`). `DIFF_SEED=n`
//! runs one seed, `DIFF_COUNT=n` changes how many.

mod common;
use common::gen::build;
use common::*;
use kiln_ir::{Literal, NodeId};
use std::collections::HashMap;

fn run_seed(seed: u64) -> Result<(), String> {
    let (g, inputs, wanted, loose) = build(seed);
    let binds: HashMap<NodeId, &Literal> = inputs.iter().map(|(i, l)| (*i, l)).collect();
    // f32 elementwise: a few ulps; approximations (exp, log, ...) and sums in another order:
    // looser. f64 everything is far tighter than these.
    let tol = if loose { 2e-4 } else { 1e-5 };
    check(&g, &binds, &wanted, tol)
}

#[test]
fn random_graphs_match_the_interpreter() {
    let seeds: Vec<u64> = match std::env::var("DIFF_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => {
            let n = std::env::var("DIFF_COUNT").map_or(1000, |s| s.parse().unwrap());
            (0..n).collect()
        }
    };
    // Split even small kernels across threads, to test the parallel paths.
    kiln_codegen::cpu::launch::set_parallel_min_work(64);
    let mut failures = Vec::new();
    for &seed in &seeds {
        if let Err(e) = run_seed(seed) {
            failures.push((seed, e));
        }
    }
    if let Some((seed, e)) = failures.first() {
        let list: Vec<u64> = failures.iter().map(|f| f.0).collect();
        panic!(
            "{} of {} random graphs differ (seeds {list:?}); first, seed {seed}:\n{e}",
            failures.len(),
            seeds.len()
        );
    }
}

/// `DIFF_SHOW=n` prints graph `n`, its schedule and kernels (a debugging aid).
#[test]
fn show_one() {
    let Ok(s) = std::env::var("DIFF_SHOW") else {
        return;
    };
    let (g, inputs, wanted, _) = build(s.parse().unwrap());
    let bound: Vec<NodeId> = inputs.iter().map(|(i, _)| *i).collect();
    let p = kiln_codegen::Program::compile(&g, &wanted, &bound).unwrap();
    println!(
        "{}\n{}\n{}",
        kiln_ir::text::print(&g),
        p.schedule_text(),
        p.kernels_text()
    );
}
