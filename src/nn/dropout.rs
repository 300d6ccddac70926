//! Dropout (`nn.Dropout`).

use super::module::Module;
use crate::error::{Error, Result};
use crate::functional as F;
use crate::random::{self, Generator};
use crate::tensor::Tensor;
use std::sync::Mutex;

/// Zeroes each element with probability `p` in training mode and scales the kept ones by
/// `1 / (1 - p)`, so the expected value is unchanged; the identity in evaluation mode.
///
/// The masks come from the layer's own Philox [`Generator`], advanced by each training-mode
/// forward: the same seed gives the same sequence of masks, whatever else draws random
/// numbers. [`Dropout::new`] seeds it from the thread's default generator (so
/// [`crate::manual_seed`] makes a model reproducible); [`Dropout::seed`] sets it explicitly.
pub struct Dropout {
    pub p: f64,
    training: bool,
    rng: Mutex<Generator>,
}

impl Dropout {
    /// Dropout with probability `p`; panics unless `0 <= p <= 1` (see [`Dropout::try_new`]).
    #[track_caller]
    pub fn new(p: f64) -> Dropout {
        Dropout::try_new(p).unwrap_or_else(|e| panic!("{e}"))
    }

    #[track_caller]
    pub fn try_new(p: f64) -> Result<Dropout> {
        check_p(p)?;
        let seed = random::with_default(|g| ((g.next_u32() as u64) << 32) | g.next_u32() as u64);
        Ok(Dropout {
            p,
            training: true,
            rng: Mutex::new(Generator::new(seed)),
        })
    }

    /// Restarts the mask stream from `seed`.
    pub fn seed(self, seed: u64) -> Dropout {
        self.reseed(seed);
        self
    }

    /// Restarts the mask stream from `seed` (on a shared layer).
    pub fn reseed(&self, seed: u64) {
        *self.rng.lock().unwrap_or_else(|p| p.into_inner()) = Generator::new(seed);
    }

    #[track_caller]
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut g = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        F::try_dropout(x, self.p, self.training, &mut g)
    }
}

#[track_caller]
pub(crate) fn check_p(p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::shape(
            "dropout",
            format!("dropout probability has to be between 0 and 1, but got {p}"),
        ));
    }
    Ok(())
}

impl Module for Dropout {
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_local_training(&mut self, training: bool) {
        self.training = training;
    }
}
