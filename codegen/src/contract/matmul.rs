//! Batched matrix product.

use super::{
    check_len, checked_numel, finish_map, gemm_into, gemm_threads, run_items, Config,
    ContractError, Epilogue, Float, MatMut, MatRef, Result,
};
use kiln_ir::{DType, Op, TensorType};

/// The sizes of a batched `matmul`: `[batch..., m, k] x [batch..., k, n] -> [batch..., m, n]`,
/// with the batch axes flattened into `batch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatMulShape {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

impl MatMulShape {
    /// The sizes of `matmul(a, b)`, checked with the IR's shape rule.
    pub fn new(a_shape: &[usize], b_shape: &[usize]) -> Result<MatMulShape> {
        let ta = TensorType::new(DType::F32, a_shape.to_vec());
        let tb = TensorType::new(DType::F32, b_shape.to_vec());
        kiln_ir::infer::infer(&Op::MatMul, &[&ta, &tb])
            .map_err(|e| ContractError::Shape(format!("matmul: {e}")))?;
        let r = a_shape.len(); // >= 2, checked by the rule
        let shape = MatMulShape {
            batch: checked_numel(&a_shape[..r - 2])?,
            m: a_shape[r - 2],
            k: a_shape[r - 1],
            n: b_shape[r - 1],
        };
        shape.lens()?;
        Ok(shape)
    }

    /// Multiply-adds x 2.
    pub fn flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.m as f64 * self.k as f64 * self.n as f64
    }

    /// Element counts of `a`, `b`, the result.
    fn lens(&self) -> Result<(usize, usize, usize)> {
        let MatMulShape { batch, m, k, n } = *self;
        Ok((
            checked_numel(&[batch, m, k])?,
            checked_numel(&[batch, k, n])?,
            checked_numel(&[batch, m, n])?,
        ))
    }
}

/// Batched matrix product `c = a · b` (per batch element), combined with `c` by `epi`
/// (channel: the last axis, `n`; runs passed to `map` are the rows of `c`).
///
/// One GEMM per batch element, written straight into `c` (a bias is written first and the
/// product accumulated onto it). Batch elements run in parallel when there are at least as
/// many as threads; otherwise each GEMM is parallel inside.
pub fn matmul<T: Float>(
    shape: &MatMulShape,
    a: &[T],
    b: &[T],
    c: &mut [T],
    epi: &Epilogue<T>,
    cfg: &Config,
) -> Result<()> {
    let (a_len, b_len, c_len) = shape.lens()?;
    check_len("matmul lhs", a.len(), a_len)?;
    check_len("matmul rhs", b.len(), b_len)?;
    check_len("matmul result", c.len(), c_len)?;
    epi.check(shape.n)?;
    let MatMulShape { m, k, n, .. } = *shape;
    if c.is_empty() {
        return Ok(());
    }
    // c is not empty: m, n and batch are positive.
    let items: Vec<(usize, &mut [T])> = c.chunks_mut(m * n).enumerate().collect();
    let par = gemm_threads(items.len(), cfg.threads);
    run_items(
        items,
        cfg.threads,
        || (),
        |_, (t, c_t)| {
            let a_t = &a[t * m * k..(t + 1) * m * k];
            let b_t = &b[t * k * n..(t + 1) * k * n];
            if let Some(bias) = epi.bias {
                for row in c_t.chunks_mut(n) {
                    if epi.accumulate {
                        row.iter_mut().zip(bias).for_each(|(o, &v)| *o += v);
                    } else {
                        row.copy_from_slice(bias);
                    }
                }
            }
            gemm_into(
                MatMut {
                    data: &mut *c_t,
                    rows: m,
                    cols: n,
                    rs: n,
                },
                epi.accumulate || epi.bias.is_some(),
                MatRef {
                    data: a_t,
                    rows: m,
                    cols: k,
                    rs: k,
                    cs: 1,
                },
                MatRef {
                    data: b_t,
                    rows: k,
                    cols: n,
                    rs: n,
                    cs: 1,
                },
                par,
            )?;
            if epi.map.is_some() {
                for (i, row) in c_t.chunks_mut(n).enumerate() {
                    finish_map(row, epi, (t * m + i) * n);
                }
            }
            Ok(())
        },
    )
}
