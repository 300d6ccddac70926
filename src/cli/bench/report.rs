//! Results of `kiln bench`: one record per (workload, batch, backend), as a JSON line or a
//! table row, and the facts printed above the table (date, machine, load).

use super::measure::median;
use serde_json::Value;

/// One measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The workload (`lenet-train`, ...).
    pub name: String,
    /// `kiln`, `torch` (eager) or `torch-compile`.
    pub backend: String,
    pub batch: Option<usize>,
    pub median_ms: f64,
    pub min_ms: f64,
    pub gflops: Option<f64>,
    /// The first call (kiln: trace + compile + one run; torch.compile: its compilation + one
    /// run); `None` for torch eager.
    pub compile_ms: Option<f64>,
    pub iters: usize,
    /// The model's parameter count, where there is a model.
    pub params: Option<usize>,
    /// How many processes the numbers are the median over.
    pub processes: usize,
}

fn num(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => {
            let r = (v * 1e4).round() / 1e4;
            serde_json::to_string(&r).unwrap_or_else(|_| "null".into())
        }
        _ => "null".into(),
    }
}

fn int(x: Option<usize>) -> String {
    x.map_or("null".into(), |v| v.to_string())
}

impl Record {
    /// The JSON line: `name`, `backend`, `batch`, `median_ms`, `min_ms`, `gflops`,
    /// `compile_ms`, then `iters`, `params`, `processes` and `speedup` (on torch lines of a
    /// `--compare-torch` run: this line's median over kiln's; otherwise null).
    pub fn json_line(&self, speedup: Option<f64>) -> String {
        let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"?\"".into());
        format!(
            "{{\"name\":{},\"backend\":{},\"batch\":{},\"median_ms\":{},\"min_ms\":{},\"gflops\":{},\"compile_ms\":{},\"iters\":{},\"params\":{},\"processes\":{},\"speedup\":{}}}",
            s(&self.name),
            s(&self.backend),
            int(self.batch),
            num(Some(self.median_ms)),
            num(Some(self.min_ms)),
            num(self.gflops),
            num(self.compile_ms),
            self.iters,
            int(self.params),
            self.processes,
            num(speedup),
        )
    }

    /// A record from one JSON line (the torch scripts' and a kiln child's output).
    pub fn from_json(v: &Value) -> Result<Record, String> {
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        let u = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
        let text = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("no `{k}` in {v}"))
        };
        Ok(Record {
            name: text("name")?,
            backend: text("backend")?,
            batch: u("batch"),
            median_ms: f("median_ms").ok_or_else(|| format!("no `median_ms` in {v}"))?,
            min_ms: f("min_ms").ok_or_else(|| format!("no `min_ms` in {v}"))?,
            gflops: f("gflops"),
            compile_ms: f("compile_ms"),
            iters: u("iters").unwrap_or(0),
            params: u("params"),
            processes: u("processes").unwrap_or(1),
        })
    }
}

/// The records in the lines of `text` that are JSON objects with a `backend` (other lines, a
/// library's warnings, are skipped).
pub fn parse_lines(text: &str) -> Result<Vec<Record>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("backend").is_some())
        .map(|v| Record::from_json(&v))
        .collect()
}

/// One record from the same measurement repeated in several processes: the median of their
/// medians (and of their first calls), the least minimum.
pub fn combine(runs: &[Record]) -> Option<Record> {
    let first = runs.first()?;
    let medians: Vec<f64> = runs.iter().map(|r| r.median_ms).collect();
    let compiles: Vec<f64> = runs.iter().filter_map(|r| r.compile_ms).collect();
    let m = median(&medians);
    let scale = |r: &Record| r.gflops.map(|g| g * r.median_ms);
    Some(Record {
        median_ms: m,
        min_ms: runs.iter().map(|r| r.min_ms).fold(f64::INFINITY, f64::min),
        // GFLOP/s at the combined median, from the first run's FLOP count.
        gflops: scale(first).map(|gf_ms| gf_ms / m),
        compile_ms: (!compiles.is_empty()).then(|| median(&compiles)),
        iters: runs.iter().map(|r| r.iters).min().unwrap_or(0),
        processes: runs.len(),
        ..first.clone()
    })
}

/// A table row: a record, its memory throughput where counted, and kiln's speedup over it.
pub struct Row {
    pub record: Record,
    pub gbps: Option<f64>,
    pub speedup: Option<f64>,
}

fn cell(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "-".into(),
    }
}

/// Milliseconds with 3 significant digits at least, without a long tail on big numbers.
fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The table: one row per (workload, batch, backend).
pub fn table(rows: &[Row], compare: bool) -> String {
    let mut out = format!(
        "{:<13} {:>5}  {:<13} {:>10} {:>10} {:>13} {:>11} {:>6}",
        "workload", "batch", "backend", "median ms", "min ms", "GFLOP/s", "compile ms", "iters"
    );
    if compare {
        out += &format!(" {:>8}", "speedup");
    }
    out.push('\n');
    let mut last: Option<(&str, Option<usize>)> = None;
    for r in rows {
        let rec = &r.record;
        let key = (rec.name.as_str(), rec.batch);
        // A blank name and batch on the rows after the first of a group.
        let (name, batch) = if last == Some(key) {
            (String::new(), String::new())
        } else {
            (
                rec.name.clone(),
                rec.batch.map_or("-".into(), |b| b.to_string()),
            )
        };
        last = Some(key);
        let rate = match (rec.gflops, r.gbps) {
            (Some(g), _) => cell(Some(g), 1),
            (None, Some(b)) => format!("{} GB/s", cell(Some(b), 1)),
            _ => "-".into(),
        };
        out += &format!(
            "{name:<13} {batch:>5}  {:<13} {:>10} {:>10} {rate:>13} {:>11} {:>6}",
            rec.backend,
            ms(rec.median_ms),
            ms(rec.min_ms),
            rec.compile_ms.map_or("-".into(), ms),
            rec.iters,
        );
        if compare {
            out += &format!(
                " {:>8}",
                r.speedup.map_or(String::new(), |s| format!("{s:.2}x"))
            );
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}

/// The load averages of `/proc/loadavg` (1, 5, 15 minutes), if readable.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The CPU's model name (`/proc/cpuinfo`, as `lscpu`) and the number of logical CPUs.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cpus} CPUs")
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    utc_from_secs(secs)
}

/// `secs` after the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, proleptic
/// Gregorian).
pub fn utc_from_secs(secs: i64) -> String {
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
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(backend: &str, median: f64, min: f64) -> Record {
        Record {
            name: "sgemm".into(),
            backend: backend.into(),
            batch: None,
            median_ms: median,
            min_ms: min,
            gflops: Some(2.0 / median),
            compile_ms: Some(10.0),
            iters: 20,
            params: None,
            processes: 1,
        }
    }

    #[test]
    fn json_lines_round_trip() {
        let r = rec("kiln", 2.0, 1.5);
        let line = r.json_line(None);
        assert!(line.starts_with(
            r#"{"name":"sgemm","backend":"kiln","batch":null,"median_ms":2.0,"min_ms":1.5,"gflops":1.0,"compile_ms":10.0,"#
        ));
        let back = parse_lines(&format!("warning: noise\n{line}\n")).unwrap();
        assert_eq!(back, vec![r]);
        assert!(parse_lines(r#"{"backend":"torch"}"#).is_err());
    }

    #[test]
    fn processes_combine_by_median() {
        let c = combine(&[
            rec("kiln", 3.0, 2.0),
            rec("kiln", 1.0, 0.5),
            rec("kiln", 2.0, 1.9),
        ])
        .unwrap();
        assert_eq!((c.median_ms, c.min_ms, c.processes), (2.0, 0.5, 3));
        assert_eq!(c.gflops, Some(1.0));
        assert!(combine(&[]).is_none());
    }

    #[test]
    fn table_groups_rows() {
        let rows = vec![
            Row {
                record: rec("kiln", 2.0, 1.5),
                gbps: None,
                speedup: None,
            },
            Row {
                record: rec("torch", 3.0, 2.5),
                gbps: None,
                speedup: Some(1.5),
            },
        ];
        let t = table(&rows, true);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("speedup"));
        assert!(lines[1].starts_with("sgemm"));
        assert!(lines[2].starts_with("      ") && lines[2].ends_with("1.50x"));
    }

    #[test]
    fn dates_and_quoting() {
        assert_eq!(utc_from_secs(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_from_secs(1_000_000_000), "2001-09-09 01:46:40 UTC");
        assert_eq!(utc_from_secs(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("--batch"), "--batch");
    }
}
