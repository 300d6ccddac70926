//! The processes `kiln bench` starts: the PyTorch side (`bench/torch/<workload>.py` under
//! `--python`) and, with `--processes K` above 1, kiln itself, one process per workload and
//! repetition. Both print one JSON line per measurement on stdout.

use super::measure::Plan;
use super::report::{parse_lines, Record};
use super::workloads::Workload;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The OpenMP wait policy the torch child runs with: the environment's, else `PASSIVE`.
///
/// With the default (spinning) policy, torch's OpenMP threads on a machine whose cores are all
/// busy wait for each other at every barrier for a whole time slice: a 512^3 matmul measured
/// 24 ms with 2 threads against 3.5 ms with 1. That would measure the machine's load, not torch.
pub fn omp_wait_policy() -> String {
    std::env::var("OMP_WAIT_POLICY")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "PASSIVE".into())
}

/// The torch side's interpreter and scripts.
#[derive(Clone, Debug)]
pub struct Torch {
    pub python: String,
    pub dir: PathBuf,
}

/// The last non-empty line of a child's stderr, for error messages.
fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// `--batch` for a child: the workload's batches as a comma-separated list, if it has any.
fn batch_arg(batches: &[Option<usize>]) -> Option<String> {
    let b: Vec<String> = batches.iter().flatten().map(|b| b.to_string()).collect();
    (!b.is_empty()).then(|| b.join(","))
}

fn plan_args(cmd: &mut Command, threads: usize, plan: Plan) {
    cmd.args(["--threads", &threads.to_string()])
        .args(["--budget", &plan.budget_s.to_string()]);
    if let Some(n) = plan.iters {
        cmd.args(["--iters", &n.to_string()]);
    }
}

/// Runs `cmd`, returning its output; stderr (progress, warnings) is captured and, when
/// `echo`, repeated on this process's stderr.
fn output(mut cmd: Command, what: &str, echo: bool) -> Result<Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if echo {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

impl Torch {
    fn command(&self, threads: usize) -> Command {
        let mut cmd = Command::new(&self.python);
        let n = threads.to_string();
        cmd.env("OMP_WAIT_POLICY", omp_wait_policy())
            .env("OMP_NUM_THREADS", &n)
            .env("MKL_NUM_THREADS", &n)
            // No __pycache__ in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    }

    /// Checks that the interpreter runs and imports torch; returns torch's version.
    pub fn probe(&self) -> Result<String, String> {
        let mut cmd = self.command(1);
        cmd.args(["-c", "import torch; print(torch.__version__)"]);
        let out = output(cmd, &format!("`{}`", self.python), false).map_err(|e| {
            format!("{e} (give a Python with torch: --python PATH or KILN_BENCH_PYTHON)")
        })?;
        if !out.status.success() {
            return Err(format!(
                "`{} -c 'import torch'` failed: {} (install torch there, or give another \
                 interpreter with --python PATH or KILN_BENCH_PYTHON)",
                self.python,
                last_line(&out.stderr)
            ));
        }
        if !self.dir.join("common.py").is_file() {
            return Err(format!(
                "the torch scripts are not in {} (--torch-dir DIR)",
                self.dir.display()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs the torch side of `w` on `batches`.
    pub fn run(
        &self,
        w: Workload,
        batches: &[Option<usize>],
        threads: usize,
        plan: Plan,
        echo: bool,
    ) -> Result<Outcome, String> {
        let script = self.dir.join(w.torch_script());
        let mut cmd = self.command(threads);
        cmd.arg(&script);
        if let Some(b) = batch_arg(batches) {
            cmd.args(["--batch", &b]);
        }
        plan_args(&mut cmd, threads, plan);
        let what = format!("{} {}", self.python, script.display());
        let out = output(cmd, &what, echo)?;
        outcome(&out, &what)
    }
}

/// The default directory of the torch scripts: `bench/torch` of the source tree.
pub fn default_torch_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/torch")
}

/// Runs the kiln side of `w` in a child `kiln bench` process.
pub fn kiln(
    w: Workload,
    batches: &[Option<usize>],
    threads: usize,
    plan: Plan,
) -> Result<Outcome, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut cmd = Command::new(&exe);
    cmd.env("RAYON_NUM_THREADS", threads.to_string())
        .args(["bench", w.name(), "--json"]);
    if let Some(b) = batch_arg(batches) {
        cmd.args(["--batch", &b]);
    }
    plan_args(&mut cmd, threads, plan);
    let what = format!("{} bench {}", exe.display(), w.name());
    let out = output(cmd, &what, false)?;
    outcome(&out, &what)
}

/// What a child reported: its records, and why it failed if it did (it may have measured
/// some batches before failing).
#[derive(Debug, Default)]
pub struct Outcome {
    pub records: Vec<Record>,
    pub error: Option<String>,
}

fn outcome(out: &Output, what: &str) -> Result<Outcome, String> {
    let records =
        parse_lines(&String::from_utf8_lossy(&out.stdout)).map_err(|e| format!("{what}: {e}"))?;
    let error = (!out.status.success())
        .then(|| format!("{what} failed ({}): {}", out.status, last_line(&out.stderr)));
    Ok(Outcome { records, error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_lists() {
        assert_eq!(batch_arg(&[Some(1), Some(64)]), Some("1,64".into()));
        assert_eq!(batch_arg(&[None]), None);
        assert_eq!(
            last_line(b"a\nTraceback\nImportError: x\n\n"),
            "ImportError: x"
        );
    }

    #[test]
    fn a_missing_python_is_a_clear_error() {
        let t = Torch {
            python: "/nonexistent/python-for-kiln-bench".into(),
            dir: default_torch_dir(),
        };
        let e = t.probe().unwrap_err();
        assert!(e.contains("cannot run") && e.contains("--python"), "{e}");
    }
}
