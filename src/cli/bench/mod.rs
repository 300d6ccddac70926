//! `kiln bench WORKLOAD`: times the tutorial's workloads on kiln and, with `--compare-torch`,
//! on PyTorch (CPU) in the same invocation (`docs/performance.md`).
//!
//! Every measurement is a first call (for kiln: trace + compile + one run, reported as
//! `compile_ms`), a warm-up, then at least 20 timed iterations (more for fast workloads, up to
//! a time budget); the median and the minimum are reported. The torch side runs in a child
//! process per workload (`bench/torch/<workload>.py` under `--python`), right after kiln's,
//! so that both see about the same load on a shared machine; `--processes K` repeats both
//! sides in K alternating processes each and reports the median over processes.
//!
//! Threads: kiln's kernels use rayon's global pool, sized through `RAYON_NUM_THREADS` before
//! anything starts it; the torch child gets `torch.set_num_threads`, `OMP_NUM_THREADS` and
//! `OMP_WAIT_POLICY=PASSIVE` unless the environment sets a policy (see
//! [`child::omp_wait_policy`]).

pub mod child;
pub mod measure;
pub mod report;
pub mod workloads;

use child::{omp_wait_policy, Outcome, Torch};
use measure::{measure, Plan};
use report::{combine, Record, Row};
use std::path::PathBuf;
use workloads::{Name, Workload};

/// Arguments of `kiln bench`.
#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(after_help = "Examples:\n  \
    kiln bench all --compare-torch --python /tmp/venv/bin/python\n  \
    kiln bench lenet-train --batch 64 --json\n  \
    kiln bench fusion --compare-torch --processes 3\n\n\
    FLOPs are counted analytically (2 per multiply-add of the convolutions, linear layers and\n\
    matrix products; a training step or forward+backward counts 3 forward passes); `speedup`\n\
    is a torch row's median over kiln's (above 1: kiln is faster).")]
pub struct BenchArgs {
    /// The workload.
    #[arg(value_enum)]
    pub workload: Name,
    /// Batch sizes, comma-separated, instead of the workload's (LeNet 1,64,256; U-Net training
    /// 1,2, inference 8; conv2d 16); fusion and sgemm have none.
    #[arg(long, value_delimiter = ',', value_parser = positive)]
    pub batch: Option<Vec<usize>>,
    /// One JSON line per measurement on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also run the PyTorch counterparts (bench/torch/*.py) and print kiln's speedup.
    #[arg(long)]
    pub compare_torch: bool,
    /// Threads on both sides (kiln's rayon pool, torch.set_num_threads).
    #[arg(long, default_value_t = 2, value_parser = positive)]
    pub threads: usize,
    /// Timed iterations of each measurement [default: enough for --budget, 20 to 2000].
    #[arg(long, value_parser = positive)]
    pub iters: Option<usize>,
    /// Seconds of timed iterations per measurement when --iters is not given.
    #[arg(long, default_value_t = 1.0, value_parser = positive_seconds)]
    pub budget: f64,
    /// The Python with torch for --compare-torch [default: $KILN_BENCH_PYTHON, else python3].
    #[arg(long)]
    pub python: Option<String>,
    /// Run each side K times, in separate alternating processes, and report the median over
    /// the processes (memory-bound work varies between processes).
    #[arg(long, default_value_t = 1, value_parser = positive)]
    pub processes: usize,
    /// The directory of the torch scripts [default: bench/torch of the source tree].
    #[arg(long)]
    pub torch_dir: Option<PathBuf>,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive integer, got `{s}`")),
    }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("expected a positive number of seconds, got `{s}`")),
    }
}

impl BenchArgs {
    fn plan(&self) -> Plan {
        Plan {
            iters: self.iters,
            budget_s: self.budget,
        }
    }

    fn python(&self) -> String {
        self.python
            .clone()
            .or_else(|| {
                std::env::var("KILN_BENCH_PYTHON")
                    .ok()
                    .filter(|p| !p.is_empty())
            })
            .unwrap_or_else(|| "python3".into())
    }
}

/// Measures the kiln side of `w` at `batch` in this process.
fn kiln_measure(w: Workload, batch: Option<usize>, plan: Plan) -> Result<Record, String> {
    let (params, mut body) = w.kiln(batch)?;
    let t = measure(&mut body, plan)?;
    Ok(Record {
        name: w.name().into(),
        backend: "kiln".into(),
        batch,
        median_ms: t.median_ms,
        min_ms: t.min_ms,
        gflops: w.flops(batch).map(|f| f / (t.median_ms * 1e6)),
        compile_ms: Some(t.first_ms),
        iters: t.iters,
        params,
        processes: 1,
    })
}

fn batch_label(b: Option<usize>) -> String {
    b.map_or(String::new(), |b| format!(" batch {b}"))
}

/// One line of progress on stderr.
fn progress(r: &Record) {
    eprintln!(
        "{:<13} {:<13}{:<10} median {:.3} ms, min {:.3} ms, first call {} ms, x{}",
        r.backend,
        r.name,
        batch_label(r.batch),
        r.median_ms,
        r.min_ms,
        r.compile_ms.map_or("-".into(), |c| format!("{c:.1}")),
        r.iters
    );
}

/// The kiln side of `w` in this process: one record per batch that worked.
fn kiln_in_process(w: Workload, batches: &[Option<usize>], plan: Plan) -> Outcome {
    let mut out = Outcome::default();
    let mut errors = Vec::new();
    for &b in batches {
        match kiln_measure(w, b, plan) {
            Ok(r) => {
                progress(&r);
                out.records.push(r);
            }
            Err(e) => errors.push(format!("kiln {}{}: {e}", w.name(), batch_label(b))),
        }
    }
    if !errors.is_empty() {
        out.error = Some(errors.join("; "));
    }
    out
}

/// Runs `kiln bench`: an error (after the table) when a measurement failed, the torch side
/// was asked for and is missing, or the two sides do not match.
pub fn run(a: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Before anything touches rayon: its global pool reads this once, when it starts.
    std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
    let plan = a.plan();
    let command = std::env::args_os()
        .map(|s| report::shell_quote(&s.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    let date = report::utc_now();
    let load_before = report::loadavg();
    let mut problems: Vec<String> = Vec::new();

    let torch = if a.compare_torch {
        let t = Torch {
            python: a.python(),
            dir: a.torch_dir.clone().unwrap_or_else(child::default_torch_dir),
        };
        match t.probe() {
            Ok(v) => Some((t, v)),
            Err(e) => {
                eprintln!("kiln bench: no torch side: {e}");
                problems.push(format!("no torch side: {e}"));
                None
            }
        }
    } else {
        None
    };
    let header = {
        let mut h = format!(
            "{command}\n{date} | {} | {} threads | load average {load_before}",
            report::machine(),
            a.threads
        );
        if let Some((t, v)) = &torch {
            h += &format!(
                "\ntorch {v} ({}), OMP_WAIT_POLICY={}",
                t.python,
                omp_wait_policy()
            );
        }
        if a.processes > 1 {
            h += &format!(
                "\nmedians over {} processes per side, alternating",
                a.processes
            );
        }
        h
    };
    if a.json {
        eprintln!("{header}");
    } else {
        println!("{header}\n");
    }

    let mut rows: Vec<Row> = Vec::new();
    let mut params_seen: Vec<String> = Vec::new();
    for w in a.workload.workloads() {
        let batches = w.batches(a.batch.as_deref());
        let mut kiln_runs: Vec<Record> = Vec::new();
        let mut torch_runs: Vec<Record> = Vec::new();
        for p in 0..a.processes {
            // Alternate which side goes first, so neither always sees the other's aftermath.
            let kiln_first = p % 2 == 0;
            for side in [kiln_first, !kiln_first] {
                let outcome = if side {
                    if a.processes == 1 {
                        Ok(kiln_in_process(w, &batches, plan))
                    } else {
                        child::kiln(w, &batches, a.threads, plan)
                    }
                } else if let Some((t, _)) = &torch {
                    t.run(w, &batches, a.threads, plan, !a.json)
                } else {
                    continue;
                };
                match outcome {
                    Ok(o) => {
                        if let Some(e) = o.error {
                            eprintln!("kiln bench: {e}");
                            problems.push(e);
                        }
                        if side {
                            kiln_runs.extend(o.records);
                        } else {
                            torch_runs.extend(o.records);
                        }
                    }
                    Err(e) => {
                        eprintln!("kiln bench: {e}");
                        problems.push(e);
                    }
                }
            }
        }
        let mut new_rows = Vec::new();
        for &b in &batches {
            let kiln = combine(
                &kiln_runs
                    .iter()
                    .filter(|r| r.batch == b)
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            if let Some(k) = &kiln {
                new_rows.push(Row {
                    gbps: w.bytes().map(|by| by / (k.median_ms * 1e6)),
                    record: k.clone(),
                    speedup: None,
                });
            }
            let mut backends: Vec<String> = Vec::new();
            for r in torch_runs.iter().filter(|r| r.batch == b) {
                if !backends.contains(&r.backend) {
                    backends.push(r.backend.clone());
                }
            }
            for backend in backends {
                let runs: Vec<Record> = torch_runs
                    .iter()
                    .filter(|r| r.batch == b && r.backend == backend)
                    .cloned()
                    .collect();
                let Some(mut t) = combine(&runs) else {
                    continue;
                };
                if let Some(e) = check_torch(w, b, &t, kiln.as_ref()) {
                    eprintln!("kiln bench: {e}");
                    problems.push(e);
                }
                // GFLOP/s from the same count as kiln's (check_torch compared the two).
                t.gflops = w.flops(b).map(|f| f / (t.median_ms * 1e6));
                let comparable = kiln.as_ref().is_some_and(|k| k.params == t.params);
                new_rows.push(Row {
                    gbps: w.bytes().map(|by| by / (t.median_ms * 1e6)),
                    speedup: kiln
                        .as_ref()
                        .filter(|_| comparable)
                        .map(|k| t.median_ms / k.median_ms),
                    record: t,
                });
            }
        }
        for r in &new_rows {
            if a.json {
                let s = r.speedup.filter(|_| a.compare_torch);
                println!("{}", r.record.json_line(s));
            }
        }
        if let Some(line) = params_line(w, &new_rows) {
            params_seen.push(line);
        }
        rows.extend(new_rows);
    }

    if !a.json {
        if !params_seen.is_empty() {
            println!("parameters: {}\n", params_seen.join("; "));
        }
        print!("{}", report::table(&rows, torch.is_some()));
        println!(
            "\nmedian and min of the timed iterations; compile ms: the first call (kiln: trace + \
             compile + one run; torch-compile: torch.compile's compilation + one run)"
        );
        if torch.is_some() {
            println!("speedup: the torch row's median / kiln's median (above 1: kiln is faster)");
        }
        println!(
            "load average {load_before} before, {} after",
            report::loadavg()
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        )
        .into())
    }
}

/// `12,345` for 12345.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (k, c) in s.chars().enumerate() {
        if k > 0 && (s.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `lenet-train 81,194 (kiln and torch)`, or each side's count where they differ.
fn params_line(w: Workload, rows: &[Row]) -> Option<String> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in rows {
        let b = r.record.backend.replace("-compile", "");
        if let Some(p) = r.record.params {
            if !counts.contains(&(b.clone(), p)) {
                counts.push((b, p));
            }
        }
    }
    let first = counts.first()?.1;
    Some(if counts.iter().all(|(_, p)| *p == first) {
        let sides: Vec<&str> = counts.iter().map(|(b, _)| b.as_str()).collect();
        format!(
            "{} {} ({})",
            w.name(),
            thousands(first),
            sides.join(" and ")
        )
    } else {
        let each: Vec<String> = counts
            .iter()
            .map(|(b, p)| format!("{} {b}", thousands(*p)))
            .collect();
        format!("{} DIFFER: {}", w.name(), each.join(", "))
    })
}

/// Whether the torch side measured the same thing: the same parameter count and the same
/// FLOP count (the torch scripts count FLOPs with forward hooks on the layers).
fn check_torch(w: Workload, b: Option<usize>, t: &Record, kiln: Option<&Record>) -> Option<String> {
    let what = format!("{} {}{}", w.name(), t.backend, batch_label(b));
    if let Some(k) = kiln {
        if k.params != t.params {
            return Some(format!(
                "{what}: parameter counts differ: kiln {:?}, torch {:?}; no speedup given",
                k.params, t.params
            ));
        }
    }
    if let (Some(ours), Some(g)) = (w.flops(b), t.gflops) {
        let theirs = g * t.median_ms * 1e6;
        if (theirs - ours).abs() > 1e-3 * ours {
            return Some(format!(
                "{what}: FLOP counts differ: kiln counts {ours:.4e}, the torch script {theirs:.4e}"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrap {
        #[command(flatten)]
        a: BenchArgs,
    }

    fn parse(s: &str) -> Result<BenchArgs, clap::Error> {
        Wrap::try_parse_from(std::iter::once("bench").chain(s.split_whitespace())).map(|w| w.a)
    }

    #[test]
    fn defaults() {
        let a = parse("lenet-train").unwrap();
        assert_eq!(a.workload, Name::LenetTrain);
        assert_eq!(
            (a.threads, a.iters, a.budget, a.processes),
            (2, None, 1.0, 1)
        );
        assert!(!a.json && !a.compare_torch && a.batch.is_none());
        assert_eq!(a.workload.workloads(), vec![Workload::LenetTrain]);
    }

    #[test]
    fn flags() {
        let a = parse(
            "all --batch 4,8 --json --compare-torch --threads 1 --iters 30 --budget 0.5 \
             --python /tmp/p --processes 3",
        )
        .unwrap();
        assert_eq!(a.workload, Name::All);
        assert_eq!(a.batch, Some(vec![4, 8]));
        assert!(a.json && a.compare_torch);
        assert_eq!(
            (a.threads, a.iters, a.budget, a.processes),
            (1, Some(30), 0.5, 3)
        );
        assert_eq!(a.python(), "/tmp/p");
        assert_eq!(a.workload.workloads().len(), 7);
        assert_eq!(parse("unet3d-infer").unwrap().workload, Name::Unet3dInfer);
    }

    #[test]
    fn bad_arguments_are_errors() {
        // An unknown workload lists the valid ones.
        let e = parse("resnet").unwrap_err().to_string();
        assert!(
            e.contains("lenet-train") && e.contains("sgemm") && e.contains("all"),
            "{e}"
        );
        for bad in [
            "",
            "sgemm --threads 0",
            "sgemm --iters 0",
            "sgemm --batch 0",
            "sgemm --batch x",
            "sgemm --budget -1",
            "sgemm --processes 0",
            "sgemm --bogus",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parameter_lines() {
        assert_eq!(thousands(81194), "81,194");
        assert_eq!(thousands(2260866), "2,260,866");
        assert_eq!(thousands(12), "12");
        let row = |backend: &str, params| Row {
            record: Record {
                name: "lenet-train".into(),
                backend: backend.into(),
                batch: Some(1),
                median_ms: 1.0,
                min_ms: 1.0,
                gflops: None,
                compile_ms: None,
                iters: 20,
                params,
                processes: 1,
            },
            gbps: None,
            speedup: None,
        };
        let w = Workload::LenetTrain;
        let same = [row("kiln", Some(81194)), row("torch", Some(81194))];
        assert_eq!(
            params_line(w, &same).unwrap(),
            "lenet-train 81,194 (kiln and torch)"
        );
        let differ = [row("kiln", Some(81194)), row("torch", Some(5))];
        assert!(params_line(w, &differ).unwrap().contains("DIFFER"));
        assert_eq!(params_line(w, &[row("kiln", None)]), None);
    }

    #[test]
    fn torch_results_are_checked() {
        let w = Workload::Sgemm;
        let flops = w.flops(None).unwrap();
        let rec = |params, gflops| Record {
            name: "sgemm".into(),
            backend: "torch".into(),
            batch: None,
            median_ms: 10.0,
            min_ms: 9.0,
            gflops,
            compile_ms: None,
            iters: 20,
            params,
            processes: 1,
        };
        let good = rec(None, Some(flops / 10e6));
        assert_eq!(check_torch(w, None, &good, Some(&good)), None);
        let other_flops = rec(None, Some(2.0 * flops / 10e6));
        assert!(check_torch(w, None, &other_flops, Some(&good)).is_some());
        let other_params = rec(Some(5), Some(flops / 10e6));
        assert!(check_torch(w, None, &other_params, Some(&good))
            .unwrap()
            .contains("parameter counts differ"));
    }
}
