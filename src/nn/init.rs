//! Parameter initialisation (`torch.nn.init`), drawing from an explicit [`Generator`].
//!
//! Each function overwrites a leaf tensor's values in place (through [`crate::assign`], under
//! `no_grad`), so a parameter keeps its identity: optimisers and aliases holding it see the
//! new values. The generator is explicit so that initialisation is reproducible: the same seed
//! gives the same network. kiln's generator is Philox, not PyTorch's Mersenne Twister, so the
//! *distributions* match PyTorch's, not the individual draws.

use crate::error::{Error, Result};
use crate::random::Generator;
use crate::tensor::Tensor;
use kiln_ir::{DType, Literal};

/// Which fan Kaiming initialisation preserves the variance of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FanMode {
    /// Preserves the variance of activations in the forward pass.
    #[default]
    FanIn,
    /// Preserves the variance of gradients in the backward pass.
    FanOut,
}

/// The nonlinearity an initialisation is scaled for (`calculate_gain`'s argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nonlinearity {
    Linear,
    Conv,
    Sigmoid,
    Tanh,
    Relu,
    /// Uses the negative slope given separately (`a` in `kaiming_uniform_`), 0.01 by default.
    LeakyRelu,
    Selu,
}

/// The recommended gain for a nonlinearity (`nn.init.calculate_gain`): 1 for linear, conv and
/// sigmoid, 5/3 for tanh, sqrt(2) for ReLU, `sqrt(2 / (1 + a^2))` for leaky ReLU with slope
/// `a` (`param`, default 0.01), 3/4 for SELU.
pub fn calculate_gain(nonlinearity: Nonlinearity, param: Option<f64>) -> f64 {
    match nonlinearity {
        Nonlinearity::Linear | Nonlinearity::Conv | Nonlinearity::Sigmoid => 1.0,
        Nonlinearity::Tanh => 5.0 / 3.0,
        Nonlinearity::Relu => 2f64.sqrt(),
        Nonlinearity::LeakyRelu => {
            let a = param.unwrap_or(0.01);
            (2.0 / (1.0 + a * a)).sqrt()
        }
        Nonlinearity::Selu => 0.75,
    }
}

/// `(fan_in, fan_out)` of a weight (`_calculate_fan_in_and_fan_out`): for shape
/// `[d0, d1, k...]`, `fan_in = d1 * prod(k)` and `fan_out = d0 * prod(k)`. PyTorch uses these
/// dims for every layer, so a transposed convolution (weight `[Cin, Cout/groups, k...]`) gets
/// `fan_in = Cout/groups * prod(k)`.
pub fn fan_in_and_fan_out(shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() < 2 {
        return Err(Error::shape(
            "init",
            format!(
                "fan in and fan out cannot be computed for a tensor with fewer than 2 dimensions (shape {shape:?})"
            ),
        ));
    }
    let receptive: usize = shape[2..].iter().product();
    Ok((shape[1] * receptive, shape[0] * receptive))
}

fn fan(shape: &[usize], mode: FanMode) -> Result<usize> {
    let (fi, fo) = fan_in_and_fan_out(shape)?;
    Ok(match mode {
        FanMode::FanIn => fi,
        FanMode::FanOut => fo,
    })
}

/// Uniform draws in `[low, high)`, with 24 random bits for f32 and 53 for f64.
fn uniform_values(n: usize, dtype: DType, low: f64, high: f64, g: &mut Generator) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let u = match dtype {
                DType::F64 => g.uniform_f64(),
                _ => g.uniform_f32() as f64,
            };
            low + (high - low) * u
        })
        .collect()
}

/// A fresh leaf of f32 values uniform in `[-bound, bound)`: how layers draw their parameters.
pub(crate) fn uniform_tensor(shape: &[usize], bound: f64, g: &mut Generator) -> Tensor {
    let v = uniform_values(kiln_ir::shape::numel(shape), DType::F32, -bound, bound, g);
    Tensor::from_literal(Literal::from_f64(shape.to_vec(), DType::F32, &v))
}

/// Writes `values` into `t` (a leaf holding data) in place.
fn write(t: &Tensor, values: &[f64]) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::DType(format!(
            "init: only float tensors can be initialised, this one is {}",
            t.dtype()
        )));
    }
    let v = Tensor::from_literal(Literal::from_f64(t.shape().to_vec(), t.dtype(), values));
    crate::autograd::no_grad(|| crate::assign(&[(t, &v)]))
}

/// Fills `t` with draws from `U(low, high)` (`nn.init.uniform_`).
pub fn uniform_(t: &Tensor, low: f64, high: f64, g: &mut Generator) -> Result<()> {
    if low.is_nan() || high.is_nan() || low > high {
        return Err(Error::shape(
            "uniform_",
            format!("expected low <= high, got low {low} and high {high}"),
        ));
    }
    write(t, &uniform_values(t.numel(), t.dtype(), low, high, g))
}

/// Fills `t` with draws from `N(mean, std^2)` (`nn.init.normal_`).
pub fn normal_(t: &Tensor, mean: f64, std: f64, g: &mut Generator) -> Result<()> {
    if std.is_nan() || std < 0.0 {
        return Err(Error::shape(
            "normal_",
            format!("std must be non-negative, got {std}"),
        ));
    }
    let v: Vec<f64> = (0..t.numel()).map(|_| mean + std * g.normal()).collect();
    write(t, &v)
}

/// Fills `t` with `value` (`nn.init.constant_`).
pub fn constant_(t: &Tensor, value: f64) -> Result<()> {
    write(t, &vec![value; t.numel()])
}

/// Fills `t` with zeros (`nn.init.zeros_`).
pub fn zeros_(t: &Tensor) -> Result<()> {
    constant_(t, 0.0)
}

/// Fills `t` with ones (`nn.init.ones_`).
pub fn ones_(t: &Tensor) -> Result<()> {
    constant_(t, 1.0)
}

/// He initialisation, uniform (`nn.init.kaiming_uniform_`): `U(-b, b)` with
/// `b = gain * sqrt(3 / fan)`, `gain = calculate_gain(nonlinearity, a)`, so the variance
/// `b^2 / 3 = gain^2 / fan` is preserved through the layer.
///
/// PyTorch's layers use `a = sqrt(5)`, leaky ReLU, fan-in: `gain^2 = 2 / 6`, so
/// `b = 1 / sqrt(fan_in)`.
pub fn kaiming_uniform_(
    t: &Tensor,
    a: f64,
    mode: FanMode,
    nonlinearity: Nonlinearity,
    g: &mut Generator,
) -> Result<()> {
    let f = fan(t.shape(), mode)?;
    let std = calculate_gain(nonlinearity, Some(a)) / (f.max(1) as f64).sqrt();
    let bound = 3f64.sqrt() * std;
    uniform_(t, -bound, bound, g)
}

/// He initialisation, normal (`nn.init.kaiming_normal_`): `N(0, gain^2 / fan)`.
pub fn kaiming_normal_(
    t: &Tensor,
    a: f64,
    mode: FanMode,
    nonlinearity: Nonlinearity,
    g: &mut Generator,
) -> Result<()> {
    let f = fan(t.shape(), mode)?;
    let std = calculate_gain(nonlinearity, Some(a)) / (f.max(1) as f64).sqrt();
    normal_(t, 0.0, std, g)
}

/// Glorot initialisation, uniform (`nn.init.xavier_uniform_`): `U(-b, b)` with
/// `b = gain * sqrt(6 / (fan_in + fan_out))`, variance `2 gain^2 / (fan_in + fan_out)`.
pub fn xavier_uniform_(t: &Tensor, gain: f64, g: &mut Generator) -> Result<()> {
    let (fi, fo) = fan_in_and_fan_out(t.shape())?;
    let bound = gain * (6.0 / ((fi + fo).max(1) as f64)).sqrt();
    uniform_(t, -bound, bound, g)
}

/// Glorot initialisation, normal (`nn.init.xavier_normal_`): `N(0, 2 gain^2 / (fan_in + fan_out))`.
pub fn xavier_normal_(t: &Tensor, gain: f64, g: &mut Generator) -> Result<()> {
    let (fi, fo) = fan_in_and_fan_out(t.shape())?;
    let std = gain * (2.0 / ((fi + fo).max(1) as f64)).sqrt();
    normal_(t, 0.0, std, g)
}
