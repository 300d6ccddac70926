//! LeNet-5 forward + backward (batch 64 by default): the reference interpreter against the
//! compiled program. `cargo run --release -p kiln-codegen --example lenet_bench [batch] [iters]`
//! (`KILN_PROFILE=1` adds the per-kernel table).

use kiln_codegen::{models, Program};
use kiln_ir::{Literal, NodeId};
use std::collections::HashMap;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let batch = args.first().copied().unwrap_or(64);
    let iters = args.get(1).copied().unwrap_or(50);
    let m = models::lenet_step(batch).unwrap();
    let values = m.random_inputs(1, 0.5);
    let binds: HashMap<NodeId, &Literal> = m.inputs.iter().copied().zip(values.iter()).collect();
    println!(
        "LeNet-5 step, batch {batch}: {} nodes, {} threads",
        m.graph.len(),
        rayon::current_num_threads()
    );

    let t = Instant::now();
    let want = kiln_ir::interp::eval(&m.graph, &binds, &m.wanted).unwrap();
    let interp = t.elapsed().as_secs_f64();
    println!("interpreter: {:8.2} ms / step", interp * 1e3);

    let t = Instant::now();
    let p = Program::compile(&m.graph, &m.wanted, &m.inputs).unwrap();
    println!(
        "compile:     {:8.2} ms ({} kernels)",
        t.elapsed().as_secs_f64() * 1e3,
        p.kernels().count()
    );
    let got = p.run(&binds).unwrap();
    let mut worst = 0.0f64;
    for (g, w) in got.iter().zip(&want) {
        let (g, w) = (g.to_f64_vec(), w.to_f64_vec());
        let scale = w.iter().fold(1e-30f64, |a, b| a.max(b.abs()));
        for (a, b) in g.iter().zip(&w) {
            worst = worst.max((a - b).abs() / scale);
        }
    }
    println!("max error relative to max |ref| per result: {worst:.2e}");
    // The machine is shared and noisy: time each step, report the median and quartiles.
    let mut times: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            p.run(&binds).unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let q = |f: f64| times[((times.len() - 1) as f64 * f).round() as usize];
    let jit = q(0.5);
    println!(
        "jit:         {:8.2} ms / step median [{:.2}-{:.2}] x{}  ({:.1}x the interpreter)",
        jit * 1e3,
        q(0.25) * 1e3,
        q(0.75) * 1e3,
        times.len(),
        interp / jit
    );
}
