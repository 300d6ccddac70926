//! The cohort summary: per metric, the statistics of pandas' `DataFrame.describe()` that the
//! tutorial prints over its subjects.
//!
//! Conventions, pandas' own: undefined values (`None`, NaN) are skipped (`skipna`), and `count`
//! says how many remained; `std` is the sample standard deviation (`ddof = 1`, NaN for fewer
//! than two values); the quartiles use linear interpolation between order statistics
//! ([`quantile`]); statistics of no values are NaN, printed `NaN`.

use std::fmt;

use super::metrics::Metrics;

/// The `q`-quantile (`0 <= q <= 1`) of ascending `sorted` values with linear interpolation, the
/// default of NumPy's `percentile` and pandas' `quantile`: at the fractional rank
/// `h = q (n - 1)` it is `x[⌊h⌋] + (h - ⌊h⌋) (x[⌊h⌋ + 1] - x[⌊h⌋])`. So the 25% point of
/// `[1, 2, 3, 4]` is at `h = 0.75`: `1 + 0.75 · 1 = 1.75`. NaN when `sorted` is empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let h = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let t = h - lo as f64;
    if t == 0.0 {
        sorted[lo]
    } else {
        sorted[lo] + t * (sorted[hi] - sorted[lo])
    }
}

/// pandas' `describe()` of one column.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// The number of defined (non-NaN) values.
    pub count: usize,
    pub mean: f64,
    /// Sample standard deviation, `sqrt(Σ (x - mean)² / (count - 1))`.
    pub std: f64,
    pub min: f64,
    /// 25%, 50% and 75% quantiles ([`quantile`]).
    pub q25: f64,
    pub q50: f64,
    pub q75: f64,
    pub max: f64,
}

impl Summary {
    /// The summary of `values`, skipping NaN.
    pub fn of(values: &[f64]) -> Summary {
        let mut x: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        x.sort_by(f64::total_cmp);
        let n = x.len();
        let mean = if n == 0 {
            f64::NAN
        } else {
            x.iter().sum::<f64>() / n as f64
        };
        // Two passes (mean first), so the variance of large equal-ish values does not cancel.
        let std = if n < 2 {
            f64::NAN
        } else {
            (x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64).sqrt()
        };
        Summary {
            count: n,
            mean,
            std,
            min: x.first().copied().unwrap_or(f64::NAN),
            q25: quantile(&x, 0.25),
            q50: quantile(&x, 0.5),
            q75: quantile(&x, 0.75),
            max: x.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// A summary per metric, printed as an aligned table, one metric per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub rows: Vec<(String, Summary)>,
}

/// The cohort table of per-subject metrics `rows` (subject name, metrics): one row per metric of
/// [`Metrics::values`], undefined values skipped.
pub fn summarize(rows: &[(String, Metrics)]) -> Table {
    let Some((_, first)) = rows.first() else {
        return Table { rows: vec![] };
    };
    let names: Vec<&'static str> = first.values().iter().map(|(n, _)| *n).collect();
    let mut columns: Vec<Vec<f64>> = vec![Vec::with_capacity(rows.len()); names.len()];
    for (_, m) in rows {
        for (col, (_, v)) in columns.iter_mut().zip(m.values()) {
            col.push(v.unwrap_or(f64::NAN));
        }
    }
    Table {
        rows: names
            .iter()
            .zip(&columns)
            .map(|(n, c)| (n.to_string(), Summary::of(c)))
            .collect(),
    }
}

/// A statistic as pandas prints it: six decimals, `NaN` when undefined.
fn cell(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_string()
    } else {
        format!("{x:.6}")
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = ["count", "mean", "std", "min", "25%", "50%", "75%", "max"];
        let body: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|(name, s)| {
                let mut r = vec![name.clone(), s.count.to_string()];
                r.extend(
                    [s.mean, s.std, s.min, s.q25, s.q50, s.q75, s.max]
                        .into_iter()
                        .map(cell),
                );
                r
            })
            .collect();
        let mut width = vec![0usize; header.len() + 1];
        for r in &body {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        for (w, h) in width[1..].iter_mut().zip(header) {
            *w = (*w).max(h.len());
        }
        // Metric names left-aligned, numbers right-aligned, two spaces between columns.
        write!(f, "{:<w$}", "", w = width[0])?;
        for (h, w) in header.iter().zip(&width[1..]) {
            write!(f, "  {h:>w$}")?;
        }
        writeln!(f)?;
        for r in &body {
            write!(f, "{:<w$}", r[0], w = width[0])?;
            for (c, w) in r[1..].iter().zip(&width[1..]) {
                write!(f, "  {c:>w$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
