//! Plain-loop contractions: the reference the kernel interpreter runs, and a fallback.
//!
//! Straight from the definitions in `kiln_ir::op` (the same bilinear relation the graph
//! interpreter enumerates for the convolution family), on safe slices, accumulating in the
//! element type. The compiled programs call the GEMM-backed routines of [`crate::contract`].

use crate::kernel::Contraction;
use kiln_ir::shape::{numel, strides, unravel};
use kiln_ir::{ConvParams, Data};
use std::ops::{Add, Mul};

/// Element types of contractions.
pub trait Elem: Copy + Default + Add<Output = Self> + Mul<Output = Self> {}
impl Elem for f32 {}
impl Elem for f64 {}

/// Runs `op` on host buffers (`a`, `b` the operands, `out` the result).
pub fn run(op: &Contraction, a: &Data, b: &Data, out: &mut Data) -> Result<(), String> {
    match (a, b, out) {
        (Data::F32(a), Data::F32(b), Data::F32(o)) => contract(op, a, b, o),
        (Data::F64(a), Data::F64(b), Data::F64(o)) => contract(op, a, b, o),
        _ => Err(format!("{op}: operands must be f32 or f64 of one type")),
    }
}

/// Runs `op` on slices of one float type.
pub fn contract<T: Elem>(op: &Contraction, a: &[T], b: &[T], out: &mut [T]) -> Result<(), String> {
    let check = |what: &str, got: usize, want: usize| {
        if got < want {
            Err(format!("{op}: {what} holds {got} elements, needs {want}"))
        } else {
            Ok(())
        }
    };
    match op {
        Contraction::MatMul { batch, m, k, n } => {
            let (batch, m, k, n) = (*batch, *m, *k, *n);
            check("lhs", a.len(), batch * m * k)?;
            check("rhs", b.len(), batch * k * n)?;
            check("result", out.len(), batch * m * n)?;
            for t in 0..batch {
                for i in 0..m {
                    let row = &mut out[(t * m + i) * n..][..n];
                    row.iter_mut().for_each(|c| *c = T::default());
                    for p in 0..k {
                        let aip = a[(t * m + i) * k + p];
                        for (c, &bpj) in row.iter_mut().zip(&b[(t * k + p) * n..][..n]) {
                            *c = *c + aip * bpj;
                        }
                    }
                }
            }
        }
        Contraction::Conv { x, w, y, params } => {
            check("input", a.len(), numel(x))?;
            check("weight", b.len(), numel(w))?;
            check("result", out.len(), numel(y))?;
            out[..numel(y)].iter_mut().for_each(|v| *v = T::default());
            let g = Geom::new(x, y, &w[2..], params);
            g.terms(|xi, wi, yi| out[yi] = out[yi] + a[xi] * b[wi]);
        }
        Contraction::ConvTranspose { x, w, y, params } => {
            check("input", a.len(), numel(x))?;
            check("weight", b.len(), numel(w))?;
            check("result", out.len(), numel(y))?;
            out[..numel(y)].iter_mut().for_each(|v| *v = T::default());
            // The result plays the relation's X, the operand its Y.
            let g = Geom::new(y, x, &w[2..], params);
            g.terms(|xi, wi, yi| out[xi] = out[xi] + a[yi] * b[wi]);
        }
        Contraction::ConvWeight { x, dy, dw, params } => {
            check("input", a.len(), numel(x))?;
            check("output gradient", b.len(), numel(dy))?;
            check("result", out.len(), numel(dw))?;
            out[..numel(dw)].iter_mut().for_each(|v| *v = T::default());
            let g = Geom::new(x, dy, &dw[2..], params);
            g.terms(|xi, wi, yi| out[wi] = out[wi] + a[xi] * b[yi]);
        }
    }
    Ok(())
}

/// `Y[n, co, o] += X[n, ci, o*s + k*d - p] * W[co, ci - g*(Cx/G), k]` for `co`, `ci` in one
/// group, `X [N, Cx, x...]`, `W [Cy, Cx/G, k...]`, `Y [N, Cy, y...]`.
struct Geom<'a> {
    x: &'a [usize],
    y: &'a [usize],
    k: &'a [usize],
    p: &'a ConvParams,
}

impl<'a> Geom<'a> {
    fn new(x: &'a [usize], y: &'a [usize], k: &'a [usize], p: &'a ConvParams) -> Geom<'a> {
        Geom { x, y, k, p }
    }

    /// Calls `f(x offset, w offset, y offset)` for every term of the relation.
    fn terms(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (xs, ys, ks) = (&self.x[2..], &self.y[2..], self.k);
        let nd = ks.len();
        let (x_sp, y_sp, k_sp) = (numel(xs), numel(ys), numel(ks));
        let (cx, cy, groups) = (self.x[1], self.y[1], self.p.groups);
        let (cxg, cyg) = (cx / groups, cy / groups);
        let xst = strides(xs);
        // For each (output position, tap): the input offset within a channel, if inside.
        let mut table = vec![None; y_sp * k_sp];
        let (mut o, mut kk) = (vec![0; nd], vec![0; nd]);
        for yf in 0..y_sp {
            unravel(yf, ys, &mut o);
            'taps: for kf in 0..k_sp {
                unravel(kf, ks, &mut kk);
                let mut xf = 0;
                for j in 0..nd {
                    let t = o[j] * self.p.stride[j] + kk[j] * self.p.dilation[j];
                    if t < self.p.padding[j] || t - self.p.padding[j] >= xs[j] {
                        continue 'taps;
                    }
                    xf += (t - self.p.padding[j]) * xst[j];
                }
                table[yf * k_sp + kf] = Some(xf);
            }
        }
        for n in 0..self.x[0] {
            for g in 0..groups {
                for a in 0..cyg {
                    let co = g * cyg + a;
                    for b in 0..cxg {
                        let ci = g * cxg + b;
                        let (xb, yb, wb) = (
                            (n * cx + ci) * x_sp,
                            (n * cy + co) * y_sp,
                            (co * cxg + b) * k_sp,
                        );
                        for yf in 0..y_sp {
                            for kf in 0..k_sp {
                                if let Some(xf) = table[yf * k_sp + kf] {
                                    f(xb + xf, wb + kf, yb + yf);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
