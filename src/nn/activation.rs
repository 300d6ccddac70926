//! Activation layers.

use super::module::Module;
use crate::functional as F;
use crate::tensor::Tensor;

/// `max(x, 0)` (`nn.ReLU`); the gradient at 0 is 0, as PyTorch's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReLU;

/// `x` for `x > 0`, `negative_slope * x` otherwise (`nn.LeakyReLU`, default slope 0.01).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeakyReLU {
    pub negative_slope: f64,
}

impl Default for LeakyReLU {
    fn default() -> Self {
        LeakyReLU {
            negative_slope: 0.01,
        }
    }
}

/// `1 / (1 + exp(-x))` (`nn.Sigmoid`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sigmoid;

/// `tanh(x)` (`nn.Tanh`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tanh;

/// `exp(x_i) / sum_j exp(x_j)` along `dim` (`nn.Softmax(dim)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Softmax {
    pub dim: isize,
}

/// `log(softmax(x))` along `dim`, computed stably (`nn.LogSoftmax(dim)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogSoftmax {
    pub dim: isize,
}

/// Which GELU formula ([`GELU`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeluApproximate {
    /// `x Phi(x)` with `Phi` the normal CDF (PyTorch's default, `approximate='none'`), through
    /// kiln's composed `erf` (absolute error below 1.2e-7, see [`F::erf`]).
    #[default]
    None,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (`approximate='tanh'`).
    Tanh,
}

/// Gaussian error linear unit (`nn.GELU`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GELU {
    pub approximate: GeluApproximate,
}

/// One of the activations as a value, for model options: static dispatch, no boxing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Activation {
    #[default]
    ReLU,
    LeakyReLU(f64),
    Sigmoid,
    Tanh,
    GELU(GeluApproximate),
}

impl Activation {
    #[track_caller]
    pub fn apply(&self, x: &Tensor) -> Tensor {
        match *self {
            Activation::ReLU => x.relu(),
            Activation::LeakyReLU(s) => x.leaky_relu(s),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Tanh => x.tanh(),
            Activation::GELU(GeluApproximate::None) => F::gelu(x),
            Activation::GELU(GeluApproximate::Tanh) => F::gelu_tanh(x),
        }
    }
}

macro_rules! stateless {
    ($t:ty, |$s:ident, $x:ident| $body:expr) => {
        impl Module for $t {
            #[track_caller]
            fn forward(&self, $x: &Tensor) -> Tensor {
                let $s = self;
                $body
            }
        }
    };
}

stateless!(ReLU, |_s, x| x.relu());
stateless!(LeakyReLU, |s, x| x.leaky_relu(s.negative_slope));
stateless!(Sigmoid, |_s, x| x.sigmoid());
stateless!(Tanh, |_s, x| x.tanh());
stateless!(Softmax, |s, x| F::softmax(x, s.dim));
stateless!(LogSoftmax, |s, x| F::log_softmax(x, s.dim));
stateless!(GELU, |s, x| Activation::GELU(s.approximate).apply(x));
stateless!(Activation, |s, x| s.apply(x));
