//! Timing one workload: the first call (trace + compile), warm-up, then the timed iterations.
//!
//! `bench/torch/common.py` implements the same procedure for the PyTorch side.

use std::time::Instant;

/// Fewest timed iterations of a measurement (unless `--iters` asks for fewer).
pub const MIN_ITERS: usize = 20;
/// Most timed iterations a time budget can ask for.
pub const MAX_ITERS: usize = 2000;
/// Warm-up after the first call: at least one call, more until this many seconds have passed.
pub const WARMUP_SECONDS: f64 = 0.2;
/// Most warm-up calls.
pub const MAX_WARMUP: usize = 50;

/// How many iterations to time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// Exactly this many (`--iters N`).
    pub iters: Option<usize>,
    /// Otherwise enough for this many seconds, [`MIN_ITERS`] to [`MAX_ITERS`] (`--budget S`).
    pub budget_s: f64,
}

impl Plan {
    /// The number of timed iterations for a workload taking `one` seconds per call.
    pub fn iterations(&self, one: f64) -> usize {
        match self.iters {
            Some(n) => n.max(1),
            None => ((self.budget_s / one.max(1e-9)).ceil() as usize).clamp(MIN_ITERS, MAX_ITERS),
        }
    }
}

/// What one measurement found, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// The first call: for kiln, trace + compile + one run.
    pub first_ms: f64,
    pub median_ms: f64,
    pub min_ms: f64,
    pub iters: usize,
}

/// The `q`-quantile of sorted `v` by linear interpolation (numpy's default); NaN when empty.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The median of `v` (any order); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    quantile(&s, 0.5)
}

/// Times `body`: the first call, warm-up, then the timed iterations of `plan`.
pub fn measure<E>(body: &mut dyn FnMut() -> Result<(), E>, plan: Plan) -> Result<Timing, E> {
    let t = Instant::now();
    body()?;
    let first = t.elapsed().as_secs_f64();
    let warm = Instant::now();
    let mut one = f64::INFINITY;
    for k in 0..MAX_WARMUP {
        if k > 0 && warm.elapsed().as_secs_f64() >= WARMUP_SECONDS {
            break;
        }
        let t = Instant::now();
        body()?;
        one = one.min(t.elapsed().as_secs_f64());
    }
    let n = plan.iterations(one);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        body()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(Timing {
        first_ms: first * 1e3,
        median_ms: quantile(&times, 0.5),
        min_ms: times[0],
        iters: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        // numpy.quantile([1, 2, 3, 4], [0, 0.25, 0.5, 0.75, 1]) == [1, 1.75, 2.5, 3.25, 4]
        let v = [1.0, 2.0, 3.0, 4.0];
        let q: Vec<f64> = [0.0, 0.25, 0.5, 0.75, 1.0]
            .iter()
            .map(|&q| quantile(&v, q))
            .collect();
        assert_eq!(q, [1.0, 1.75, 2.5, 3.25, 4.0]);
        assert_eq!(median(&[7.0]), 7.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn iterations_follow_the_budget_within_bounds() {
        let plan = Plan {
            iters: None,
            budget_s: 1.0,
        };
        assert_eq!(plan.iterations(0.01), 100);
        assert_eq!(plan.iterations(0.3), MIN_ITERS);
        assert_eq!(plan.iterations(1e-7), MAX_ITERS);
        let fixed = Plan {
            iters: Some(3),
            budget_s: 1.0,
        };
        assert_eq!(fixed.iterations(1e-7), 3);
    }

    #[test]
    fn measure_counts_calls() {
        let mut calls = 0usize;
        let plan = Plan {
            iters: Some(5),
            budget_s: 1.0,
        };
        let t = measure::<()>(
            &mut || {
                calls += 1;
                Ok(())
            },
            plan,
        )
        .unwrap();
        assert_eq!(t.iters, 5);
        // first call + at least one warm-up + 5 timed
        assert!(calls >= 7, "{calls}");
        assert!(t.min_ms <= t.median_ms);
        let mut fail = || Err::<(), _>("boom");
        assert_eq!(measure(&mut fail, plan), Err("boom"));
    }
}
