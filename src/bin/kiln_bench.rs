//! `kiln_bench`: kiln against PyTorch (CPU) on the same workloads, in one invocation.
//!
//! ```text
//! cargo run --release --bin kiln_bench -- [--threads 2] [--python python3] [--seconds 2]
//!     [--reps N] [--only NAME,NAME] [--no-torch] [--json FILE] [--list]
//! ```
//!
//! Every workload is timed on kiln, then at once `bench/torch_bench.py` runs the same workload
//! (same shapes, same kind of initialisation, same thread count) under `--python` and reports
//! its times as JSON on its last line of stdout. Each side warms up (compilation, oneDNN
//! primitive creation), then repeats the workload until about `--seconds` have passed (at
//! least 5 times) and reports the median and the interquartile range: the machine this runs on
//! is shared and noisy, so a single timing means little. The table printed at the end gives
//! `torch median / kiln median` (above 1: kiln is faster), with the command line, the date and
//! the load average, which `--json` also writes.
//!
//! Threads: kiln's contraction kernels use rayon's global pool, sized here through
//! `RAYON_NUM_THREADS` before rayon starts; torch gets `torch.set_num_threads`. The torch
//! child also gets `OMP_WAIT_POLICY=PASSIVE` unless the environment sets it: with the
//! default (spinning) policy, torch's OpenMP threads on a machine whose cores are all busy
//! wait for each other at every barrier for a whole time slice — a 512³ matmul measured 24 ms
//! with 2 threads against 3.5 ms with 1 — which would measure the machine's load, not torch.

use kiln::compile::{compile, CompiledStep};
use kiln::functional::{self as F, ConvOpts, Reduction};
use kiln::nn::models::{LeNet, UNet3d, UNet3dOptions};
use kiln::nn::{Linear, Module};
use kiln::optim::{Adadelta, Sgd};
use kiln::{DType, Generator, Tensor};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

type Res<T> = std::result::Result<T, String>;

/// A workload's timed body: one repetition (a training step, a forward+backward, ...).
type Body = Box<dyn FnMut() -> Res<()>>;

/// One benchmark: how to set it up on kiln, and which torch workload it is compared with.
struct Workload {
    name: &'static str,
    /// The name of the same workload in `bench/torch_bench.py` (the torch side of both LeNet
    /// variants is the same eager step).
    torch: &'static str,
    what: &'static str,
    setup: fn() -> Res<Body>,
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "matmul_512",
            torch: "matmul_512",
            what: "512x512 @ 512x512 f32, eager",
            setup: matmul_512,
        },
        Workload {
            name: "mlp_step",
            torch: "mlp_step",
            what: "MLP 784-256-10, batch 64, CE, SGD momentum: compiled step vs torch eager",
            setup: mlp_step,
        },
        Workload {
            name: "lenet_step_compiled",
            torch: "lenet_step",
            what: "LeNet, batch 64, CE, SGD momentum: kiln::compile step vs torch eager",
            setup: lenet_compiled,
        },
        Workload {
            name: "lenet_step_eager",
            torch: "lenet_step",
            what: "LeNet, batch 64, CE, SGD momentum: eager loop on both",
            setup: lenet_eager,
        },
        Workload {
            name: "conv2d_fwd_bwd",
            torch: "conv2d_fwd_bwd",
            what: "conv2d 16->32 k3 p1 on [32,16,32,32], sum, grads of x, w, b",
            setup: conv2d_fwd_bwd,
        },
        Workload {
            name: "unet3d_b8_step",
            torch: "unet3d_b8_step",
            what: "3-D U-Net base 8, 2->2 ch, batch 2 of 32^3, MSE, Adadelta: compiled step",
            setup: || unet_step(8),
        },
        Workload {
            name: "unet3d_b16_step",
            torch: "unet3d_b16_step",
            what: "3-D U-Net base 16, 2->2 ch, batch 2 of 32^3, MSE, Adadelta: compiled step",
            setup: || unet_step(16),
        },
        Workload {
            name: "softmax_ce_3d",
            torch: "softmax_ce_3d",
            what: "cross_entropy (log-softmax + NLL) on [2,4,32,32,32], fwd + grad of logits",
            setup: softmax_ce_3d,
        },
    ]
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn randn(shape: &[usize], g: &mut Generator) -> Res<Tensor> {
    let t = Tensor::randn_with(shape.to_vec(), DType::F32, g);
    t.realize().map_err(err)?;
    Ok(t)
}

fn matmul_512() -> Res<Body> {
    let mut g = Generator::new(0);
    let a = randn(&[512, 512], &mut g)?;
    let b = randn(&[512, 512], &mut g)?;
    Ok(Box::new(move || a.matmul(&b).realize().map_err(err)))
}

/// Runs a compiled step and reads its loss (as `loss.item()` does on the torch side).
fn run_step(step: &CompiledStep, x: &Tensor, y: &Tensor) -> Res<()> {
    let out = step.run(&[x, y]).map_err(err)?;
    let loss = out.first().ok_or("the step returned no loss")?;
    let l = loss.try_item().map_err(err)?;
    if l.is_finite() {
        Ok(())
    } else {
        Err(format!("the loss is {l}"))
    }
}

fn mlp_step() -> Res<Body> {
    let mut g = Generator::new(0);
    let fc1 = Linear::new(784, 256, true, &mut g);
    let fc2 = Linear::new(256, 10, true, &mut g);
    let mut params = fc1.parameters();
    params.extend(fc2.parameters());
    let mut opt = Sgd::new(params, 0.01).momentum(0.9);
    let x = randn(&[64, 784], &mut g)?;
    let y = Tensor::randint_with(0, 10, [64], &mut g);
    let step = compile(&[&x, &y], |b| {
        opt.zero_grad();
        let h = fc1.forward(&b[0]).relu();
        let loss = F::cross_entropy(&fc2.forward(&h), &b[1], None, -100, Reduction::Mean);
        loss.try_backward(None)?;
        opt.step()?;
        Ok(vec![loss])
    })
    .map_err(err)?;
    Ok(Box::new(move || run_step(&step, &x, &y)))
}

fn lenet_data(g: &mut Generator) -> Res<(Tensor, Tensor)> {
    Ok((
        randn(&[64, 1, 32, 32], g)?,
        Tensor::randint_with(0, 10, [64], g),
    ))
}

fn lenet_compiled() -> Res<Body> {
    let mut g = Generator::new(0);
    let net = LeNet::new(&mut g);
    let mut opt = Sgd::new(net.parameters(), 0.05).momentum(0.9);
    let (x, y) = lenet_data(&mut g)?;
    let step = compile(&[&x, &y], |b| {
        opt.zero_grad();
        let loss = F::cross_entropy(&net.forward(&b[0]), &b[1], None, -100, Reduction::Mean);
        loss.try_backward(None)?;
        opt.step()?;
        Ok(vec![loss])
    })
    .map_err(err)?;
    Ok(Box::new(move || run_step(&step, &x, &y)))
}

fn lenet_eager() -> Res<Body> {
    let mut g = Generator::new(0);
    let net = LeNet::new(&mut g);
    let mut opt = Sgd::new(net.parameters(), 0.05).momentum(0.9);
    let (x, y) = lenet_data(&mut g)?;
    Ok(Box::new(move || {
        opt.zero_grad();
        let loss = F::cross_entropy(&net.forward(&x), &y, None, -100, Reduction::Mean);
        loss.try_backward(None).map_err(err)?;
        opt.step().map_err(err)?;
        loss.try_item().map_err(err).map(|_| ())
    }))
}

/// Gradients of `loss` with respect to `wrt`, all realised as one graph.
fn realize_grads(loss: &Tensor, wrt: &[&Tensor]) -> Res<()> {
    let grads: Vec<Tensor> = kiln::autograd::grad(loss, wrt, None)
        .map_err(err)?
        .into_iter()
        .flatten()
        .collect();
    if grads.len() != wrt.len() {
        return Err("a gradient is missing".into());
    }
    kiln::lower::realize(&grads).map_err(err)
}

fn conv2d_fwd_bwd() -> Res<Body> {
    let mut g = Generator::new(0);
    let x = randn(&[32, 16, 32, 32], &mut g)?.requires_grad_(true);
    let w = randn(&[32, 16, 3, 3], &mut g)?.requires_grad_(true);
    let b = randn(&[32], &mut g)?.requires_grad_(true);
    Ok(Box::new(move || {
        let opts = ConvOpts {
            padding: &[1],
            ..ConvOpts::default()
        };
        let loss = F::conv2d(&x, &w, Some(&b), &opts).sum_all();
        realize_grads(&loss, &[&x, &w, &b])
    }))
}

fn unet_step(base: usize) -> Res<Body> {
    let mut g = Generator::new(0);
    let net = UNet3d::new(2, 2, base, UNet3dOptions::default(), &mut g).map_err(err)?;
    let mut opt = Adadelta::new(net.parameters());
    let x = randn(&[2, 2, 32, 32, 32], &mut g)?;
    let t = Tensor::rand_with(vec![2, 2, 32, 32, 32], DType::F32, &mut g);
    let step = compile(&[&x, &t], |b| {
        opt.zero_grad();
        let loss = F::mse_loss(&net.try_forward(&b[0])?, &b[1], Reduction::Mean);
        loss.try_backward(None)?;
        opt.step()?;
        Ok(vec![loss])
    })
    .map_err(err)?;
    Ok(Box::new(move || run_step(&step, &x, &t)))
}

fn softmax_ce_3d() -> Res<Body> {
    let mut g = Generator::new(0);
    let x = randn(&[2, 4, 32, 32, 32], &mut g)?.requires_grad_(true);
    let y = Tensor::randint_with(0, 4, [2, 32, 32, 32], &mut g);
    Ok(Box::new(move || {
        let loss = F::cross_entropy(&x, &y, None, -100, Reduction::Mean);
        realize_grads(&loss, &[&x])
    }))
}

/// Median and quartiles of the repetitions, in seconds.
#[derive(Clone, Copy, Debug)]
struct Stats {
    median: f64,
    q1: f64,
    q3: f64,
    reps: usize,
}

/// The `q`-quantile of sorted `v` by linear interpolation (numpy's default).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn stats(mut times: Vec<f64>) -> Stats {
    times.sort_by(f64::total_cmp);
    Stats {
        median: quantile(&times, 0.5),
        q1: quantile(&times, 0.25),
        q3: quantile(&times, 0.75),
        reps: times.len(),
    }
}

/// Repetitions for a time budget: enough for `seconds` at `one` seconds each, 5 to 1000.
fn reps_for(seconds: f64, one: f64) -> usize {
    ((seconds / one.max(1e-9)).ceil() as usize).clamp(5, 1000)
}

/// Two warm-up runs (the first compiles), then the timed repetitions.
fn measure(body: &mut Body, seconds: f64, reps: Option<usize>) -> Res<Stats> {
    body()?;
    let t = Instant::now();
    body()?;
    let one = t.elapsed().as_secs_f64();
    let n = reps.unwrap_or_else(|| reps_for(seconds, one));
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        body()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(stats(times))
}

struct Args {
    threads: usize,
    python: String,
    script: PathBuf,
    seconds: f64,
    reps: Option<usize>,
    only: Option<Vec<String>>,
    torch: bool,
    json: Option<PathBuf>,
    list: bool,
}

const USAGE: &str = "usage: kiln_bench [--threads N] [--python PATH] [--torch-script FILE] \
[--seconds S] [--reps N] [--only NAME,NAME] [--no-torch] [--json FILE] [--list]";

fn parse_args(argv: &[String]) -> Res<Args> {
    let mut a = Args {
        threads: 2,
        python: "python3".into(),
        script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/torch_bench.py"),
        seconds: 2.0,
        reps: None,
        only: None,
        torch: true,
        json: None,
        list: false,
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let num = |v: String, what: &str| -> Res<f64> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("{what}: expected a positive number, got `{v}`"))
        };
        match flag.as_str() {
            "--threads" => a.threads = num(value()?, "--threads")? as usize,
            "--python" => a.python = value()?,
            "--torch-script" => a.script = value()?.into(),
            "--seconds" => a.seconds = num(value()?, "--seconds")?,
            "--reps" => a.reps = Some(num(value()?, "--reps")? as usize),
            "--only" => a.only = Some(value()?.split(',').map(str::to_string).collect()),
            "--no-torch" => a.torch = false,
            "--json" => a.json = Some(value()?.into()),
            "--list" => a.list = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if a.threads == 0 || a.reps == Some(0) {
        return Err("--threads and --reps must be at least 1".into());
    }
    Ok(a)
}

/// The load averages of `/proc/loadavg` (1, 5, 15 minutes), if readable.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, proleptic Gregorian).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    utc_from_secs(secs)
}

/// `secs` after the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_from_secs(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Quotes an argument for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs the torch side on `names`; its last line of stdout is a JSON object
/// `{"torch": version, "results": {name: {"median", "q1", "q3", "reps"}}}`.
fn run_torch(a: &Args, names: &[&str]) -> Res<Value> {
    let mut cmd = Command::new(&a.python);
    cmd.env("OMP_WAIT_POLICY", omp_wait_policy())
        .arg(&a.script)
        .args(["--threads", &a.threads.to_string()])
        .args(["--seconds", &a.seconds.to_string()])
        .args(["--only", &names.join(",")]);
    if let Some(r) = a.reps {
        cmd.args(["--reps", &r.to_string()]);
    }
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {} {}: {e}", a.python, a.script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", a.script.display(), out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or("the torch script printed nothing")?;
    serde_json::from_str(last).map_err(|e| format!("torch script output `{last}`: {e}"))
}

/// The OpenMP wait policy the torch child runs with: the environment's, else `PASSIVE`.
fn omp_wait_policy() -> String {
    std::env::var("OMP_WAIT_POLICY")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "PASSIVE".into())
}

fn torch_stats(v: &Value, name: &str) -> Option<Stats> {
    let r = v.get("results")?.get(name)?;
    let f = |k: &str| r.get(k).and_then(Value::as_f64);
    Some(Stats {
        median: f("median")?,
        q1: f("q1")?,
        q3: f("q3")?,
        reps: r.get("reps").and_then(Value::as_u64)? as usize,
    })
}

fn stats_json(s: Option<Stats>) -> Value {
    match s {
        Some(s) => json!({"median_s": s.median, "q1_s": s.q1, "q3_s": s.q3, "reps": s.reps}),
        None => Value::Null,
    }
}

/// `median [q1-q3] ms`.
fn fmt_stats(s: Option<Stats>) -> String {
    match s {
        Some(s) => format!(
            "{:>9.3} [{:.3}-{:.3}] x{}",
            s.median * 1e3,
            s.q1 * 1e3,
            s.q3 * 1e3,
            s.reps
        ),
        None => "-".into(),
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&argv) {
        eprintln!("kiln_bench: {e}");
        std::process::exit(1);
    }
}

fn run(argv: &[String]) -> Res<()> {
    let a = parse_args(argv)?;
    let all = workloads();
    if a.list {
        for w in &all {
            println!("{:<22} {}", w.name, w.what);
        }
        return Ok(());
    }
    // Before anything touches rayon: its global pool reads this once, at first use.
    std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
    let chosen: Vec<&Workload> = all
        .iter()
        .filter(|w| {
            a.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|n| n == w.name))
        })
        .collect();
    if let Some(o) = &a.only {
        if let Some(bad) = o.iter().find(|n| !all.iter().any(|w| w.name == n.as_str())) {
            return Err(format!("unknown workload `{bad}` (see --list)"));
        }
    }
    let command = format!(
        "cargo run --release --bin kiln_bench -- {}",
        argv.iter()
            .map(|s| shell_quote(s))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let date = utc_now();
    let load_before = loadavg();
    println!(
        "{command}\n{date}, load average {load_before}, {} threads, torch OMP_WAIT_POLICY={}",
        a.threads,
        omp_wait_policy()
    );

    // Each workload on kiln, then at once on torch (a child per workload, so that both
    // sides of a ratio see about the same load on this shared machine).
    let mut kiln_results: Vec<Res<Stats>> = Vec::new();
    let mut torch_results: Vec<Option<Stats>> = Vec::new();
    let mut torch_version: Option<Value> = None;
    for w in &chosen {
        let r = (w.setup)().and_then(|mut body| measure(&mut body, a.seconds, a.reps));
        match &r {
            Ok(s) => println!("kiln  {:<22} {} ms", w.name, fmt_stats(Some(*s))),
            Err(e) => println!("kiln  {:<22} failed: {e}", w.name),
        }
        kiln_results.push(r);
        let t = if a.torch {
            match run_torch(&a, &[w.torch]) {
                Ok(v) => {
                    torch_version = v.get("torch").cloned();
                    torch_stats(&v, w.torch)
                }
                Err(e) => {
                    eprintln!("kiln_bench: torch side of {}: {e}", w.name);
                    None
                }
            }
        } else {
            None
        };
        torch_results.push(t);
    }
    let load_after = loadavg();

    println!(
        "\n{:<22} {:>28} {:>28} {:>7}",
        "workload", "kiln ms: median [IQR] xN", "torch ms: median [IQR] xN", "ratio"
    );
    let mut rows = Vec::new();
    for ((w, r), &t) in chosen.iter().zip(&kiln_results).zip(&torch_results) {
        let k = r.as_ref().ok().copied();
        let ratio = match (k, t) {
            (Some(k), Some(t)) if k.median > 0.0 => Some(t.median / k.median),
            _ => None,
        };
        println!(
            "{:<22} {:>28} {:>28} {:>7}",
            w.name,
            fmt_stats(k),
            fmt_stats(t),
            ratio.map_or("-".into(), |r| format!("{r:.2}"))
        );
        rows.push(json!({
            "name": w.name,
            "torch_name": w.torch,
            "what": w.what,
            "kiln": stats_json(k),
            "kiln_error": r.as_ref().err(),
            "torch": stats_json(t),
            "ratio_torch_over_kiln": ratio,
        }));
    }
    println!("ratio = torch median / kiln median (> 1: kiln faster)");
    println!("{command}\n{date}, load average {load_before} before, {load_after} after");

    if let Some(path) = &a.json {
        let doc = json!({
            "command": command,
            "date": date,
            "threads": a.threads,
            "torch_omp_wait_policy": omp_wait_policy(),
            "seconds_per_workload": a.seconds,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "torch_version": torch_version,
            "workloads": rows,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(err)?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if kiln_results.iter().any(|r| r.is_err()) {
        return Err("some kiln workloads failed (see above)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        // numpy.quantile([1, 2, 3, 4], [0.25, 0.5, 0.75]) == [1.75, 2.5, 3.25]
        let s = stats(vec![4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.q1, s.median, s.q3, s.reps), (1.75, 2.5, 3.25, 4));
        assert_eq!(stats(vec![7.0]).median, 7.0);
    }

    #[test]
    fn repetitions_follow_the_budget_within_bounds() {
        assert_eq!(reps_for(2.0, 0.1), 20);
        assert_eq!(reps_for(2.0, 10.0), 5);
        assert_eq!(reps_for(2.0, 1e-6), 1000);
    }

    #[test]
    fn arguments_are_checked() {
        let args =
            |s: &str| parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>());
        assert!(args("--threads 0").is_err());
        assert!(args("--seconds").is_err());
        assert!(args("--bogus").is_err());
        let a = args("--threads 3 --only matmul_512 --no-torch").unwrap();
        assert_eq!(a.threads, 3);
        assert!(!a.torch);
    }

    #[test]
    fn dates_and_quoting() {
        // Known instants: the epoch, the billennium, a leap day (`date -u -d @SECS`).
        assert_eq!(utc_from_secs(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_from_secs(1_000_000_000), "2001-09-09 01:46:40 UTC");
        assert_eq!(utc_from_secs(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("--only"), "--only");
    }
}
