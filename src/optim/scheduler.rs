//! Learning-rate schedulers (`torch.optim.lr_scheduler`), with PyTorch's semantics.
//!
//! A scheduler does not own the optimiser: it reads the learning rates when it is made and
//! is handed the optimiser at every `step`, which sets the learning rate of each parameter
//! group through [`Optimizer::set_group_lr`] (so it also reaches a compiled step already
//! traced: the learning rate is a graph input). Call it after the optimiser's `step`, as in
//! PyTorch:
//!
//! ```
//! use kiln::optim::{LrScheduler, Sgd, StepLR};
//! use kiln::Tensor;
//! let w = Tensor::zeros([2]).requires_grad_(true);
//! let mut opt = Sgd::new(vec![w], 0.1);
//! let mut sched = StepLR::new(&opt, 2, 0.5).unwrap();
//! let mut lrs = vec![];
//! for _epoch in 0..5 {
//!     lrs.push(opt.get_lr());
//!     opt.step().unwrap(); // (after a backward pass)
//!     sched.step(&mut opt).unwrap();
//! }
//! assert_eq!(lrs, vec![0.1, 0.1, 0.05, 0.05, 0.025]);
//! ```
//!
//! The base learning rates are the groups' learning rates when the scheduler is made
//! (PyTorch's `initial_lr`, which differs only when a second scheduler is made on an
//! optimiser whose learning rate a first one already changed).

use super::{invalid, Optimizer};
use crate::error::Result;

/// A scheduler stepped once per epoch (or per iteration) without a metric.
pub trait LrScheduler {
    /// Advances one epoch and sets the optimiser's learning rates.
    fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()>;

    /// The learning rates set by the last step (`get_last_lr()`), one per group.
    fn get_last_lr(&self) -> &[f64];

    /// Number of steps taken (`last_epoch`; 0 right after construction).
    fn last_epoch(&self) -> i64;
}

fn set_all(opt: &mut dyn Optimizer, lrs: &[f64]) -> Result<()> {
    for (g, &lr) in lrs.iter().enumerate() {
        opt.set_group_lr(g, lr)?;
    }
    Ok(())
}

/// Multiplies each group's learning rate by `gamma` every `step_size` epochs (`StepLR`):
/// `lr_t = base_lr * gamma^(t div step_size)` when nothing else changes the learning rate.
///
/// PyTorch's recursive form is used (at a nonzero multiple of `step_size` the *current*
/// learning rate is multiplied by `gamma`), so changes from elsewhere compose as in PyTorch.
pub struct StepLR {
    step_size: usize,
    gamma: f64,
    last_epoch: i64,
    base_lrs: Vec<f64>,
    last_lr: Vec<f64>,
}

impl StepLR {
    /// `StepLR(optimizer, step_size, gamma)`; PyTorch's default `gamma` is 0.1. A
    /// `step_size` of 0 is an error.
    pub fn new(opt: &dyn Optimizer, step_size: usize, gamma: f64) -> Result<StepLR> {
        if step_size == 0 {
            return Err(invalid("StepLR", "step_size must be at least 1"));
        }
        if !gamma.is_finite() {
            return Err(invalid(
                "StepLR",
                format!("gamma must be finite, got {gamma}"),
            ));
        }
        let lrs = opt.lrs();
        Ok(StepLR {
            step_size,
            gamma,
            last_epoch: 0,
            base_lrs: lrs.clone(),
            last_lr: lrs,
        })
    }

    /// The base learning rates (`base_lrs`).
    pub fn base_lrs(&self) -> &[f64] {
        &self.base_lrs
    }
}

impl LrScheduler for StepLR {
    fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        self.last_epoch += 1;
        let mut lrs = opt.lrs();
        if self.last_epoch % self.step_size as i64 == 0 {
            for lr in &mut lrs {
                *lr *= self.gamma;
            }
            set_all(opt, &lrs)?;
        }
        self.last_lr = opt.lrs();
        Ok(())
    }

    fn get_last_lr(&self) -> &[f64] {
        &self.last_lr
    }

    fn last_epoch(&self) -> i64 {
        self.last_epoch
    }
}

/// Cosine annealing from each group's base learning rate down to `eta_min` over `t_max`
/// epochs (`CosineAnnealingLR`), without restarts:
/// `lr_t = eta_min + (base_lr - eta_min) (1 + cos(pi t / t_max)) / 2` when nothing else
/// changes the learning rate; past `t_max` it rises again with period `2 t_max`, as PyTorch's.
///
/// PyTorch's recursive form is used:
/// `lr_t = eta_min + (lr_{t-1} - eta_min) (1 + cos(pi t / T)) / (1 + cos(pi (t-1) / T))`,
/// and at `(t - 1 - T) mod 2T = 0` (where that quotient is 0/0)
/// `lr_t = lr_{t-1} + (base_lr - eta_min) (1 - cos(pi / T)) / 2`.
pub struct CosineAnnealingLR {
    t_max: usize,
    eta_min: f64,
    last_epoch: i64,
    base_lrs: Vec<f64>,
    last_lr: Vec<f64>,
}

impl CosineAnnealingLR {
    /// `CosineAnnealingLR(optimizer, T_max, eta_min)`; PyTorch's default `eta_min` is 0. A
    /// `t_max` of 0 is an error.
    pub fn new(opt: &dyn Optimizer, t_max: usize, eta_min: f64) -> Result<CosineAnnealingLR> {
        if t_max == 0 {
            return Err(invalid("CosineAnnealingLR", "T_max must be at least 1"));
        }
        if !eta_min.is_finite() {
            return Err(invalid(
                "CosineAnnealingLR",
                format!("eta_min must be finite, got {eta_min}"),
            ));
        }
        let lrs = opt.lrs();
        Ok(CosineAnnealingLR {
            t_max,
            eta_min,
            last_epoch: 0,
            base_lrs: lrs.clone(),
            last_lr: lrs,
        })
    }

    pub fn base_lrs(&self) -> &[f64] {
        &self.base_lrs
    }
}

impl LrScheduler for CosineAnnealingLR {
    fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        use std::f64::consts::PI;
        self.last_epoch += 1;
        let t = self.last_epoch;
        let tm = self.t_max as i64;
        let tmf = self.t_max as f64;
        let eta_min = self.eta_min;
        let lrs: Vec<f64> = opt
            .lrs()
            .iter()
            .zip(&self.base_lrs)
            .map(|(&lr, &base)| {
                if (t - 1 - tm).rem_euclid(2 * tm) == 0 {
                    lr + (base - eta_min) * (1.0 - (PI / tmf).cos()) / 2.0
                } else {
                    (1.0 + (PI * t as f64 / tmf).cos()) / (1.0 + (PI * (t - 1) as f64 / tmf).cos())
                        * (lr - eta_min)
                        + eta_min
                }
            })
            .collect();
        set_all(opt, &lrs)?;
        self.last_lr = opt.lrs();
        Ok(())
    }

    fn get_last_lr(&self) -> &[f64] {
        &self.last_lr
    }

    fn last_epoch(&self) -> i64 {
        self.last_epoch
    }
}

/// Whether a smaller or a larger metric is better ([`ReduceLROnPlateau`]'s `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlateauMode {
    Min,
    Max,
}

/// How "significantly better" is measured ([`ReduceLROnPlateau`]'s `threshold_mode`):
/// relative to the best value (`best * (1 -+ threshold)`) or absolute (`best -+ threshold`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThresholdMode {
    Rel,
    Abs,
}

/// [`ReduceLROnPlateau`]'s options, PyTorch's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct PlateauOptions {
    /// Default `Min`.
    pub mode: PlateauMode,
    /// Multiplies the learning rate on a plateau; must be below 1. Default 0.1.
    pub factor: f64,
    /// Epochs without improvement tolerated before reducing. Default 10.
    pub patience: usize,
    /// Default 1e-4.
    pub threshold: f64,
    /// Default `Rel`.
    pub threshold_mode: ThresholdMode,
    /// Epochs to wait after a reduction before counting bad epochs again. Default 0.
    pub cooldown: usize,
    /// Lower bound on the learning rate: one value for every group, or one per group.
    /// Default `[0.0]` (one value for all).
    pub min_lr: Vec<f64>,
    /// Reductions smaller than this are skipped. Default 1e-8.
    pub eps: f64,
}

impl Default for PlateauOptions {
    fn default() -> Self {
        PlateauOptions {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: vec![0.0],
            eps: 1e-8,
        }
    }
}

impl PlateauOptions {
    pub fn mode(mut self, mode: PlateauMode) -> Self {
        self.mode = mode;
        self
    }
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }
    pub fn patience(mut self, patience: usize) -> Self {
        self.patience = patience;
        self
    }
    pub fn threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }
    pub fn threshold_mode(mut self, threshold_mode: ThresholdMode) -> Self {
        self.threshold_mode = threshold_mode;
        self
    }
    pub fn cooldown(mut self, cooldown: usize) -> Self {
        self.cooldown = cooldown;
        self
    }
    /// One lower bound for every group.
    pub fn min_lr(mut self, min_lr: f64) -> Self {
        self.min_lr = vec![min_lr];
        self
    }
    /// One lower bound per group.
    pub fn min_lrs(mut self, min_lrs: Vec<f64>) -> Self {
        self.min_lr = min_lrs;
        self
    }
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
}

/// Reduces the learning rate by `factor` when a metric has stopped improving for more than
/// `patience` epochs (`ReduceLROnPlateau`), PyTorch's algorithm:
///
/// ```text
/// better = current < best * (1 - threshold)     (min, rel; max: > best * (1 + threshold);
///                                                abs: best -+ threshold)
/// if better: best = current, bad = 0  else  bad += 1
/// if cooldown_counter > 0: cooldown_counter -= 1, bad = 0
/// if bad > patience:
///     lr = max(lr * factor, min_lr)  for each group, if that lowers it by more than eps
///     cooldown_counter = cooldown, bad = 0
/// ```
pub struct ReduceLROnPlateau {
    opts: PlateauOptions,
    min_lrs: Vec<f64>,
    best: f64,
    num_bad_epochs: usize,
    cooldown_counter: usize,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

impl ReduceLROnPlateau {
    /// Checks the options as PyTorch does (`factor < 1`; one `min_lr`, or one per group).
    pub fn new(opt: &dyn Optimizer, opts: PlateauOptions) -> Result<ReduceLROnPlateau> {
        if opts.factor.is_nan() || opts.factor >= 1.0 {
            return Err(invalid("ReduceLROnPlateau", "Factor should be < 1.0."));
        }
        let n = opt.num_groups();
        let min_lrs = match opts.min_lr.len() {
            1 => vec![opts.min_lr[0]; n],
            k if k == n => opts.min_lr.clone(),
            k => {
                return Err(invalid(
                    "ReduceLROnPlateau",
                    format!("expected {n} min_lrs, got {k}"),
                ))
            }
        };
        let mut s = ReduceLROnPlateau {
            opts,
            min_lrs,
            best: 0.0,
            num_bad_epochs: 0,
            cooldown_counter: 0,
            last_epoch: 0,
            last_lr: opt.lrs(),
        };
        s.reset();
        Ok(s)
    }

    fn reset(&mut self) {
        self.best = match self.opts.mode {
            PlateauMode::Min => f64::INFINITY,
            PlateauMode::Max => f64::NEG_INFINITY,
        };
        self.cooldown_counter = 0;
        self.num_bad_epochs = 0;
    }

    fn is_better(&self, a: f64) -> bool {
        let (best, th) = (self.best, self.opts.threshold);
        match (self.opts.mode, self.opts.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - th),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - th,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (th + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + th,
        }
    }

    /// Records the epoch's metric (e.g. the validation loss) and reduces the learning rates
    /// if it has not improved for more than `patience` epochs.
    pub fn step(&mut self, opt: &mut dyn Optimizer, metric: f64) -> Result<()> {
        self.last_epoch += 1;
        if self.is_better(metric) {
            self.best = metric;
            self.num_bad_epochs = 0;
        } else {
            self.num_bad_epochs += 1;
        }
        if self.cooldown_counter > 0 {
            self.cooldown_counter -= 1;
            self.num_bad_epochs = 0;
        }
        if self.num_bad_epochs > self.opts.patience {
            self.reduce_lr(opt)?;
            self.cooldown_counter = self.opts.cooldown;
            self.num_bad_epochs = 0;
        }
        self.last_lr = opt.lrs();
        Ok(())
    }

    fn reduce_lr(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        let n = opt.num_groups();
        if n != self.min_lrs.len() {
            if self.opts.min_lr.len() == 1 {
                self.min_lrs = vec![self.opts.min_lr[0]; n];
            } else {
                return Err(invalid(
                    "ReduceLROnPlateau",
                    format!(
                        "the optimiser has {n} parameter groups, {} when the scheduler was made; give one min_lr per group",
                        self.min_lrs.len()
                    ),
                ));
            }
        }
        for (g, &min_lr) in self.min_lrs.iter().enumerate() {
            let Some(old) = opt.group_lr(g) else { continue };
            let new = (old * self.opts.factor).max(min_lr);
            if old - new > self.opts.eps {
                opt.set_group_lr(g, new)?;
            }
        }
        Ok(())
    }

    /// The learning rates after the last step (`get_last_lr()`).
    pub fn get_last_lr(&self) -> &[f64] {
        &self.last_lr
    }

    /// The best metric seen (`best`).
    pub fn best(&self) -> f64 {
        self.best
    }

    /// Bad epochs counted since the last improvement or reduction (`num_bad_epochs`).
    pub fn num_bad_epochs(&self) -> usize {
        self.num_bad_epochs
    }

    /// Number of steps taken (`last_epoch`).
    pub fn last_epoch(&self) -> i64 {
        self.last_epoch
    }
}
