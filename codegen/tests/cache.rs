//! The program cache: structurally identical graphs compile once; anything that changes the
//! computation (a constant, a bound node, a shape) compiles anew. Also: programs are
//! `Send + Sync` and run from several threads at once.

use kiln_codegen::{cache_stats, execute_on, Backend, Program};
use kiln_ir::{Data, Graph, Literal, Loc, NodeId, TensorType, UnaryOp};
use std::collections::HashMap;

/// The cache's counters are global: tests of this file take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `tanh(x * c + y)` with inputs named by `prefix` and nodes located at `line`.
fn graph(prefix: &str, line: u32, c: f32) -> (Graph, NodeId, NodeId, NodeId) {
    let mut g = Graph::new();
    g.set_origin(
        Some(Loc {
            file: "model.rs".into(),
            line,
            col: 1,
        }),
        None,
    );
    let t = TensorType::new(kiln_ir::DType::F32, vec![3, 17]);
    let x = g.input(format!("{prefix}x"), t.clone()).unwrap();
    let y = g.input(format!("{prefix}y"), t.clone()).unwrap();
    let k = g
        .constant(Literal::new(vec![3, 17], Data::F32(vec![c; 51])).unwrap())
        .unwrap();
    let m = g.mul(x, k).unwrap();
    let a = g.add(m, y).unwrap();
    let r = g.unary(UnaryOp::Tanh, a).unwrap();
    (g, x, y, r)
}

fn lit(v: f32) -> Literal {
    Literal::new(
        vec![3, 17],
        Data::F32((0..51).map(|i| v * i as f32 / 51.0).collect()),
    )
    .unwrap()
}

#[test]
fn identical_structure_hits_and_changes_miss() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (xl, yl) = (lit(1.0), lit(-0.5));
    let run = |g: &Graph, x, y, r| {
        let b: HashMap<NodeId, &Literal> = [(x, &xl), (y, &yl)].into_iter().collect();
        execute_on(Backend::Jit, g, &b, &[r]).unwrap().remove(0)
    };
    let s0 = cache_stats();
    let (g1, x1, y1, r1) = graph("a_", 10, 2.0);
    let v1 = run(&g1, x1, y1, r1);
    let s1 = cache_stats();
    assert_eq!(s1.misses - s0.misses, 1, "first compile is a miss");

    // Other names, other source lines, a new Graph object: the same program.
    let (g2, x2, y2, r2) = graph("b_", 99, 2.0);
    let v2 = run(&g2, x2, y2, r2);
    let s2 = cache_stats();
    assert_eq!(
        s2.misses, s1.misses,
        "identical structure must not recompile"
    );
    assert_eq!(s2.hits - s1.hits, 1);
    assert_eq!(v1, v2);

    // Another constant: another program (and another result).
    let (g3, x3, y3, r3) = graph("a_", 10, 3.0);
    let v3 = run(&g3, x3, y3, r3);
    let s3 = cache_stats();
    assert_eq!(
        s3.misses - s2.misses,
        1,
        "a different constant is a different program"
    );
    assert_ne!(v1, v3);

    // The same graph with an interior node bound: another program.
    let b: HashMap<NodeId, &Literal> = [(x1, &xl), (y1, &yl), (r1, &yl)].into_iter().collect();
    let v4 = execute_on(Backend::Jit, &g1, &b, &[r1]).unwrap().remove(0);
    assert_eq!(v4, yl, "a bound node's value is used as is");
    let s4 = cache_stats();
    assert_eq!(s4.misses - s3.misses, 1);

    // Re-running the first graph: a hit.
    let v5 = run(&g1, x1, y1, r1);
    assert_eq!(v5, v1);
    assert_eq!(cache_stats().misses, s4.misses);
}

#[test]
fn programs_run_from_many_threads() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Program>();
    let (g, x, y, r) = graph("t_", 1, 0.25);
    let p = Program::compile(&g, &[r], &[x, y]).unwrap();
    let want = {
        let (xl, yl) = (lit(1.0), lit(2.0));
        let b: HashMap<NodeId, &Literal> = [(x, &xl), (y, &yl)].into_iter().collect();
        kiln_ir::interp::eval(&g, &b, &[r]).unwrap().remove(0)
    };
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let (xl, yl) = (lit(1.0), lit(2.0));
                let b: HashMap<NodeId, &Literal> = [(x, &xl), (y, &yl)].into_iter().collect();
                for _ in 0..50 {
                    let got = p.run(&b).unwrap().remove(0);
                    let (gv, wv) = (got.to_f64_vec(), want.to_f64_vec());
                    for (a, b) in gv.iter().zip(&wv) {
                        assert!((a - b).abs() < 1e-6);
                    }
                }
            });
        }
    });
}

#[test]
fn binding_errors_are_reported() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (g, x, y, r) = graph("e_", 1, 1.0);
    let p = Program::compile(&g, &[r], &[x, y]).unwrap();
    let xl = lit(1.0);
    // y missing
    let b: HashMap<NodeId, &Literal> = [(x, &xl)].into_iter().collect();
    let e = p.run(&b).unwrap_err().to_string();
    assert!(e.contains("not bound"), "{e}");
    // wrong type
    let bad = Literal::new(vec![51], Data::F32(vec![0.0; 51])).unwrap();
    let b: HashMap<NodeId, &Literal> = [(x, &xl), (y, &bad)].into_iter().collect();
    let e = p.run(&b).unwrap_err().to_string();
    assert!(e.contains("type"), "{e}");
    // an unbound input at compile time
    let e = Program::compile(&g, &[r], &[x]).err().unwrap().to_string();
    assert!(e.contains("is not bound"), "{e}");
}

#[test]
fn temporaries_reused_across_runs_and_threads() {
    // A program keeps its temporaries between runs (`memory::TempPool`): runs with different
    // inputs, one after another and from several threads at once, must each get their own
    // values, never a previous run's leftovers.
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = kiln_codegen::models::conv_block(2, 3, 4, 8).unwrap();
    let p = Program::compile(&m.graph, &m.wanted, &m.inputs).unwrap();
    let check = |seed: u64| {
        let values = m.random_inputs(seed, 1.0);
        let b: HashMap<NodeId, &Literal> = m.inputs.iter().copied().zip(values.iter()).collect();
        let want = kiln_ir::interp::eval(&m.graph, &b, &m.wanted).unwrap();
        for _ in 0..3 {
            let got = p.run(&b).unwrap();
            for (g, w) in got.iter().zip(&want) {
                for (a, b) in g.to_f64_vec().iter().zip(w.to_f64_vec()) {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "seed {seed}: {a} vs {b}"
                    );
                }
            }
        }
    };
    for seed in 0..3 {
        check(seed);
    }
    std::thread::scope(|s| {
        for seed in 10..14 {
            let check = &check;
            s.spawn(move || check(seed));
        }
    });
}
