//! Gradient clipping (`torch.nn.utils.clip_grad_norm_`, `clip_grad_value_`).
//!
//! The scaled gradients are built as lazy tensors and written with one [`crate::assign`]
//! into the gradient tensors (PyTorch scales `.grad` in place), together with the total norm,
//! so clipping is one program eagerly and part of the compiled step inside one. A gradient
//! that is not a realised tensor (a lazy one set with [`Tensor::set_grad`], or one traced
//! inside a compiled step) is replaced by its scaled value with `set_grad` instead, as
//! in-place ops rebind intermediate tensors.

use super::invalid;
use crate::autograd::no_grad;
use crate::error::Result;
use crate::tensor::Tensor;
use kiln_ir::DType;

/// Clips the gradients of `params` by their global 2-norm: [`clip_grad_norm_with`] with
/// `norm_type = 2`.
pub fn clip_grad_norm_(params: &[Tensor], max_norm: f64) -> Result<Tensor> {
    clip_grad_norm_with(params, max_norm, 2.0)
}

/// Clips gradients by their global norm (`torch.nn.utils.clip_grad_norm_`), PyTorch's
/// algorithm over the parameters that have a gradient:
///
/// ```text
/// total = norm([norm(g_1), ..., norm(g_n)])      (p-norm of the per-tensor p-norms)
/// coef  = min(max_norm / (total + 1e-6), 1)
/// g_i   = g_i * coef                             (always applied, coef = 1 when total is small)
/// ```
///
/// `norm_type` is `p > 0` or `f64::INFINITY` (max of absolute values). Returns the total norm
/// (before clipping) as a realised 0-d tensor, computed by the same program as the scaled
/// gradients (inside a compiled step: the lazy norm, which the step can return); 0 when no
/// parameter has a gradient. A negative or NaN `max_norm` or an
/// unsupported `norm_type` is an error (PyTorch would silently flip or poison the gradients).
pub fn clip_grad_norm_with(params: &[Tensor], max_norm: f64, norm_type: f64) -> Result<Tensor> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(invalid(
            "clip_grad_norm_",
            format!("max_norm must be >= 0, got {max_norm}"),
        ));
    }
    if norm_type.is_nan() || norm_type <= 0.0 {
        return Err(invalid(
            "clip_grad_norm_",
            format!("norm_type must be > 0 or inf, got {norm_type}"),
        ));
    }
    let grads: Vec<(Tensor, Tensor)> = params
        .iter()
        .filter_map(|p| p.grad().map(|g| (p.clone(), g)))
        .collect();
    if grads.is_empty() {
        return Ok(Tensor::scalar(0.0f32));
    }
    if let Some((p, g)) = grads.iter().find(|(_, g)| !g.dtype().is_float()) {
        return Err(invalid(
            "clip_grad_norm_",
            format!(
                "the gradient of the parameter made at {} is {}, not a float tensor",
                p.loc(),
                g.dtype()
            ),
        ));
    }
    no_grad(|| {
        // The norms' common dtype: f64 if any gradient is f64.
        let dt = if grads.iter().any(|(_, g)| g.dtype() == DType::F64) {
            DType::F64
        } else {
            DType::F32
        };
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|(_, g)| vector_norm(g, norm_type).to_dtype(dt))
            .collect();
        let stacked = crate::stack(&norms.iter().collect::<Vec<_>>(), 0);
        let total = vector_norm(&stacked, norm_type);
        let coef = total
            .add(1e-6)
            .reciprocal()
            .mul(max_norm)
            .clamp(None, Some(1.0));
        let mut pairs: Vec<(Tensor, Tensor)> = Vec::new();
        for (p, g) in &grads {
            let scaled = g.mul(&coef.to_dtype(g.dtype()));
            if g.is_source() {
                pairs.push((g.clone(), scaled));
            } else {
                p.set_grad(Some(scaled));
            }
        }
        if crate::compile::is_tracing() {
            // Inside a compiled step the norm is a value of the traced program (an output the
            // step may return), not a tensor written after the program ran.
            let refs: Vec<(&Tensor, &Tensor)> = pairs.iter().map(|(t, v)| (t, v)).collect();
            crate::assign(&refs)?;
            return Ok(total);
        }
        let total_out = Tensor::full(Vec::<usize>::new(), 0.0, dt);
        pairs.push((total_out.clone(), total));
        let refs: Vec<(&Tensor, &Tensor)> = pairs.iter().map(|(t, v)| (t, v)).collect();
        crate::assign(&refs)?;
        Ok(total_out)
    })
}

/// `torch.linalg.vector_norm(x, ord)` over all elements, 0-d: `max |x|` for `ord = inf`,
/// `sqrt(sum x^2)` for 2, `sum |x|` for 1, `(sum |x|^ord)^(1/ord)` otherwise.
fn vector_norm(x: &Tensor, ord: f64) -> Tensor {
    if ord.is_infinite() {
        x.abs().max_all()
    } else if ord == 2.0 {
        x.mul(x).sum_all().sqrt()
    } else if ord == 1.0 {
        x.abs().sum_all()
    } else {
        x.abs().pow(ord).sum_all().pow(1.0 / ord)
    }
}

/// Clamps every gradient of `params` to `[-clip_value, clip_value]` in place
/// (`torch.nn.utils.clip_grad_value_`), with one [`crate::assign`] (or `set_grad` for a lazy
/// gradient, as [`clip_grad_norm_with`]). A negative or NaN `clip_value` is an error.
pub fn clip_grad_value_(params: &[Tensor], clip_value: f64) -> Result<()> {
    if clip_value.is_nan() || clip_value < 0.0 {
        return Err(invalid(
            "clip_grad_value_",
            format!("clip_value must be >= 0, got {clip_value}"),
        ));
    }
    no_grad(|| {
        let mut pairs: Vec<(Tensor, Tensor)> = Vec::new();
        for p in params {
            let Some(g) = p.grad() else { continue };
            let clipped = g.clamp(Some(-clip_value), Some(clip_value));
            if g.is_source() {
                pairs.push((g, clipped));
            } else {
                p.set_grad(Some(clipped));
            }
        }
        let refs: Vec<(&Tensor, &Tensor)> = pairs.iter().map(|(t, v)| (t, v)).collect();
        crate::assign(&refs)
    })
}
