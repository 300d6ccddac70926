//! Times the contraction kernels (`kiln_codegen::contract`) on a few model-sized cases and
//! compares them with the reference interpreter and, optionally, PyTorch on the same machine.
//!
//! ```text
//! cargo run --release -p kiln-codegen --example contract_bench -- \
//!     [--threads N] [--tile ELEMS] [--reps N] [--interp] [--torch PYTHON] [--only SUBSTRING]
//!     [--cpu]
//! ```
//!
//! Cases: matmul 512³; a LeNet conv (x 64x1x32x32, w 6x1x3x3) and a 3-D U-Net conv
//! (x 1x32x32³, w 32x32x3³, padding 1), each forward (`conv`), input gradient
//! (`conv_transpose`) and weight gradient (`conv_weight`). Each time is the median of `--reps`
//! runs after a warm-up. `--interp` also times `kiln_ir::interp` (one run for the large
//! cases: it takes seconds). `--torch PYTHON` runs `contract_bench_torch.py` (beside this file)
//! with that interpreter and the same thread count, then prints the ratios. `--cpu` times the
//! calling thread's CPU time instead of wall time (for tuning with `--threads 1` on a busy
//! machine).

use kiln_codegen::contract::{
    conv, conv_transpose, conv_weight, matmul, Config, ConvGeometry, Epilogue, MatMulShape,
};
use kiln_ir::{interp, ConvParams, DType, Data, Graph, Literal, Op, TensorType};
use std::collections::HashMap;
use std::time::Instant;

struct Args {
    cfg: Config,
    reps: usize,
    interp: bool,
    torch: Option<String>,
    only: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        cfg: Config::default(),
        reps: 20,
        interp: false,
        torch: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--threads" => a.cfg.threads = value().parse().expect("--threads N"),
            "--tile" => a.cfg.tile_elems = value().parse().expect("--tile ELEMS"),
            "--reps" => a.reps = value().parse().expect("--reps N"),
            "--interp" => a.interp = true,
            "--cpu" => CPU_TIME.store(true, std::sync::atomic::Ordering::Relaxed),
            "--torch" => a.torch = Some(value()),
            "--only" => a.only = Some(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// CPU time of the calling thread in seconds (Linux `schedstat`), for `--cpu`.
fn thread_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns * 1e-9)
}

/// Whether `--cpu` asked for CPU time of the calling thread instead of wall time (meaningful
/// with `--threads 1` on a busy machine).
static CPU_TIME: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Median seconds of `reps` runs of `f`, after one warm-up run (with `--cpu`: the mean CPU
/// time of the calling thread, since Linux updates it only every few milliseconds).
fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let reps = reps.max(1);
    if CPU_TIME.load(std::sync::atomic::Ordering::Relaxed) {
        let c = thread_cpu_secs();
        (0..reps).for_each(|_| f());
        return (thread_cpu_secs() - c) / reps as f64;
    }
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Seconds of one interpreter evaluation of `op(a, b)` (median of `reps`, no warm-up).
fn interp_secs(op: Op, a: (&[usize], &[f32]), b: (&[usize], &[f32]), reps: usize) -> f64 {
    let mut g = Graph::new();
    let ia = g.input("a", TensorType::new(DType::F32, a.0)).unwrap();
    let ib = g.input("b", TensorType::new(DType::F32, b.0)).unwrap();
    let id = g.push(op, &[ia, ib]).unwrap();
    let la = Literal::new(a.0, Data::F32(a.1.to_vec())).unwrap();
    let lb = Literal::new(b.0, Data::F32(b.1.to_vec())).unwrap();
    let binds: HashMap<_, _> = [(ia, &la), (ib, &lb)].into_iter().collect();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(interp::eval(&g, &binds, &[id]).unwrap());
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

struct Row {
    name: String,
    flops: f64,
    secs: f64,
    interp: Option<f64>,
}

fn main() {
    let args = parse_args();
    let cfg = args.cfg;
    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    let mut rows: Vec<Row> = Vec::new();
    let epi = Epilogue::none();

    // matmul 512^3
    if wanted("matmul_512") {
        let (a_s, b_s) = ([512, 512], [512, 512]);
        let shape = MatMulShape::new(&a_s, &b_s).unwrap();
        let (a, b) = (values(512 * 512, 1), values(512 * 512, 2));
        let mut c = vec![0.0f32; 512 * 512];
        let secs = median_secs(args.reps, || {
            matmul(&shape, &a, &b, &mut c, &epi, &cfg).unwrap();
        });
        let interp = args
            .interp
            .then(|| interp_secs(Op::MatMul, (&a_s, &a), (&b_s, &b), 3));
        rows.push(Row {
            name: "matmul_512".into(),
            flops: shape.flops(),
            secs,
            interp,
        });
    }

    let mut unet = ConvParams::new(3);
    unet.padding = vec![1; 3];
    let cases = [
        (
            "lenet",
            vec![64, 1, 32, 32],
            vec![6, 1, 3, 3],
            ConvParams::new(2),
            args.reps,
            3,
        ),
        (
            "unet3d",
            vec![1, 32, 32, 32, 32],
            vec![32, 32, 3, 3, 3],
            unet,
            args.reps.div_ceil(2),
            1,
        ),
    ];
    for (name, xs, ws, p, reps, interp_reps) in cases {
        let g = ConvGeometry::conv(&xs, &ws, &p).unwrap();
        let ys = g.y_shape();
        let x = values(xs.iter().product(), 3);
        let w = values(ws.iter().product(), 4);
        let dy = values(ys.iter().product(), 5);
        let mut y = vec![0.0f32; dy.len()];
        let mut dx = vec![0.0f32; x.len()];
        let mut dw = vec![0.0f32; w.len()];
        let interp_on = |op: Op, a: (&[usize], &[f32]), b: (&[usize], &[f32])| {
            args.interp.then(|| interp_secs(op, a, b, interp_reps))
        };
        let n = format!("{name}_fwd");
        if wanted(&n) {
            let secs = median_secs(reps, || conv(&g, &x, &w, &mut y, &epi, &cfg).unwrap());
            let interp = interp_on(Op::Conv(p.clone()), (&xs, &x), (&ws, &w));
            rows.push(Row {
                name: n,
                flops: g.flops(),
                secs,
                interp,
            });
        }
        let n = format!("{name}_dx");
        if wanted(&n) {
            let secs = median_secs(reps, || {
                conv_transpose(&g, &dy, &w, &mut dx, &epi, &cfg).unwrap()
            });
            let interp = interp_on(Op::ConvTranspose(p.clone()), (&ys, &dy), (&ws, &w));
            rows.push(Row {
                name: n,
                flops: g.flops(),
                secs,
                interp,
            });
        }
        let n = format!("{name}_dw");
        if wanted(&n) {
            let secs = median_secs(reps, || {
                conv_weight(&g, &x, &dy, &mut dw, &epi, &cfg).unwrap()
            });
            let op = Op::ConvWeight {
                params: p.clone(),
                kernel: ws[2..].to_vec(),
            };
            let interp = interp_on(op, (&xs, &x), (&ys, &dy));
            rows.push(Row {
                name: n,
                flops: g.flops(),
                secs,
                interp,
            });
        }
    }

    // PyTorch on the same machine, right after.
    let mut torch: HashMap<String, f64> = HashMap::new();
    if let Some(python) = &args.torch {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/contract_bench_torch.py"
        );
        let out = std::process::Command::new(python)
            .args([script, &cfg.threads.to_string(), &args.reps.to_string()])
            .output()
            .expect("running the PyTorch script");
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let ["torch", name, secs] = f[..] {
                torch.insert(name.to_string(), secs.parse().unwrap_or(f64::NAN));
            }
        }
    }

    println!(
        "threads {}, tile {} elements, median of {} runs (U-Net: {})",
        cfg.threads,
        cfg.tile_elems,
        args.reps,
        args.reps.div_ceil(2)
    );
    println!(
        "{:<12} {:>8} {:>10} {:>9} {:>11} {:>9} {:>10} {:>10}",
        "case", "GFLOP", "kiln ms", "GFLOP/s", "interp ms", "speedup", "torch ms", "torch/kiln"
    );
    for r in &rows {
        let interp = r.interp.map_or(("-".into(), "-".into()), |t| {
            (format!("{:.1}", t * 1e3), format!("{:.0}x", t / r.secs))
        });
        let t = torch.get(&r.name).copied();
        let torch_cols = t.map_or(("-".into(), "-".into()), |t| {
            (format!("{:.3}", t * 1e3), format!("{:.2}", t / r.secs))
        });
        println!(
            "{:<12} {:>8.3} {:>10.3} {:>9.1} {:>11} {:>9} {:>10} {:>10}",
            r.name,
            r.flops / 1e9,
            r.secs * 1e3,
            r.flops / r.secs / 1e9,
            interp.0,
            interp.1,
            torch_cols.0,
            torch_cols.1
        );
    }
}
