//! `Display` in PyTorch's style: `tensor([[1., 2.],\n        [3., 4.]], requires_grad=True)`.
//!
//! Follows PyTorch's printing rules: integer-valued floats print as `1.`, others with four
//! decimals, scientific notation (`1.0000e-05`) when the nonzero magnitudes span more than 1000x
//! or exceed 1e8 (or, for non-integers, go below 1e-4); columns share one width; tensors over 1000 elements are summarised with `...`
//! keeping three entries at each edge of each axis. Printing realises the tensor.

use crate::tensor::Tensor;
use kiln_ir::{DType, Literal};
use std::fmt;

const THRESHOLD: usize = 1000;
const EDGE: usize = 3;
const LINEWIDTH: usize = 80;

enum Style {
    Int,
    IntFloat,
    Fixed,
    Sci,
    Bool,
}

fn sci(v: f64) -> String {
    if !v.is_finite() {
        return fixed_special(v);
    }
    let s = format!("{v:.4e}");
    let (m, e) = s.split_once('e').expect("{:e} has an exponent");
    let e: i32 = e.parse().expect("exponent is an integer");
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

fn fixed_special(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v > 0.0 {
        "inf".into()
    } else {
        "-inf".into()
    }
}

fn fmt_value(v: f64, style: &Style) -> String {
    match style {
        Style::Int => format!("{}", v as i64),
        Style::Bool => (if v != 0.0 { "True" } else { "False" }).into(),
        Style::IntFloat if v.is_finite() => format!("{v:.0}."),
        Style::Fixed if v.is_finite() => format!("{v:.4}"),
        Style::Sci => sci(v),
        _ => fixed_special(v),
    }
}

fn choose_style(dtype: DType, vals: &[f64]) -> Style {
    match dtype {
        DType::Bool => return Style::Bool,
        DType::I64 => return Style::Int,
        _ => {}
    }
    // PyTorch's _Formatter: the nonzero finite magnitudes decide.
    let finite: Vec<f64> = vals.iter().copied().filter(|v| v.is_finite()).collect();
    let nz: Vec<f64> = finite
        .iter()
        .map(|v| v.abs())
        .filter(|&v| v != 0.0)
        .collect();
    let max = nz.iter().cloned().fold(0.0f64, f64::max);
    let min = nz.iter().cloned().fold(f64::INFINITY, f64::min);
    if finite.iter().all(|v| v.fract() == 0.0) {
        return if !nz.is_empty() && (max / min > 1000.0 || max > 1e8) {
            Style::Sci
        } else {
            Style::IntFloat
        };
    }
    if !nz.is_empty() && (max / min > 1000.0 || max > 1e8 || min < 1e-4) {
        Style::Sci
    } else {
        Style::Fixed
    }
}

/// Indices shown along an axis of size `n` (with `None` marking the `...`).
fn shown(n: usize, summarize: bool) -> Vec<Option<usize>> {
    if summarize && n > 2 * EDGE {
        (0..EDGE)
            .map(Some)
            .chain([None])
            .chain((n - EDGE..n).map(Some))
            .collect()
    } else {
        (0..n).map(Some).collect()
    }
}

fn collect_shown(lit: &Literal, summarize: bool) -> Vec<f64> {
    let shape = &lit.shape;
    let strides = kiln_ir::shape::strides(shape);
    let mut out = Vec::new();
    fn rec(
        d: usize,
        off: usize,
        shape: &[usize],
        st: &[usize],
        lit: &Literal,
        s: bool,
        out: &mut Vec<f64>,
    ) {
        if d == shape.len() {
            out.push(lit.data.get_f64(off));
            return;
        }
        for i in shown(shape[d], s).into_iter().flatten() {
            rec(d + 1, off + i * st[d], shape, st, lit, s, out);
        }
    }
    rec(0, 0, shape, &strides, lit, summarize, &mut out);
    out
}

struct Printer<'a> {
    lit: &'a Literal,
    strides: Vec<usize>,
    style: Style,
    width: usize,
    summarize: bool,
}

impl Printer<'_> {
    fn item(&self, off: usize) -> String {
        format!(
            "{:>w$}",
            fmt_value(self.lit.data.get_f64(off), &self.style),
            w = self.width
        )
    }

    /// Prints the sub-tensor at axis `d`, offset `off`; `indent` is the column of its `[`.
    fn block(&self, d: usize, off: usize, indent: usize, out: &mut String) {
        let shape = &self.lit.shape;
        let idx = shown(shape[d], self.summarize);
        if d + 1 == shape.len() {
            // PyTorch's _vector_str: wrap so that lines stay within 80 columns.
            let items: Vec<String> = idx
                .iter()
                .map(|i| match i {
                    None => " ...".to_string(),
                    Some(i) => self.item(off + i * self.strides[d]),
                })
                .collect();
            let per_line = ((LINEWIDTH.saturating_sub(indent)) / (self.width + 2)).max(1);
            let lines: Vec<String> = items.chunks(per_line).map(|c| c.join(", ")).collect();
            out.push('[');
            out.push_str(&lines.join(&format!(",\n{}", " ".repeat(indent + 1))));
            out.push(']');
            return;
        }
        out.push('[');
        for (k, i) in idx.iter().enumerate() {
            if k > 0 {
                out.push(',');
                out.push_str(&"\n".repeat(shape.len() - d - 1));
                out.push_str(&" ".repeat(indent + 1));
            }
            match i {
                None => out.push_str("..."),
                Some(i) => self.block(d + 1, off + i * self.strides[d], indent + 1, out),
            }
        }
        out.push(']');
    }
}

/// Formats a literal as PyTorch's `tensor(...)` body, without the suffixes.
pub fn format_literal(lit: &Literal) -> String {
    let summarize = lit.numel() > THRESHOLD;
    let vals = collect_shown(lit, summarize);
    let style = choose_style(lit.dtype(), &vals);
    // PyTorch's column width: for floats, that of the nonzero finite values only (`inf`/`nan`
    // are padded to it but do not widen it: `tensor([1., inf])`).
    let width = vals
        .iter()
        .filter(|&&v| !lit.dtype().is_float() || (v.is_finite() && v != 0.0))
        .map(|&v| fmt_value(v, &style).len())
        .fold(1, usize::max);
    let p = Printer {
        lit,
        strides: kiln_ir::shape::strides(&lit.shape),
        style,
        width,
        summarize,
    };
    let mut out = String::from("tensor(");
    if lit.shape.is_empty() {
        out.push_str(&fmt_value(lit.data.get_f64(0), &p.style));
    } else if lit.numel() == 0 {
        out.push_str("[]");
    } else {
        p.block(0, 0, "tensor(".len(), &mut out);
    }
    out
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lit = match self.literal() {
            Ok(l) => l,
            Err(e) => return write!(f, "tensor(<not computable: {e}>)"),
        };
        let mut s = format_literal(&lit);
        if lit.numel() == 0 && !lit.shape.is_empty() && lit.shape != [0] {
            // A Python tuple, as PyTorch prints `torch.Size`: `size=(0, 3)`.
            let dims: Vec<String> = lit.shape.iter().map(|d| d.to_string()).collect();
            s.push_str(&format!(", size=({})", dims.join(", ")));
        }
        match self.dtype() {
            DType::F64 => s.push_str(", dtype=kiln.float64"),
            DType::F32 | DType::I64 | DType::Bool => {}
        }
        if let Some(g) = self.grad_fn() {
            s.push_str(&format!(", grad_fn=<{g}>"));
        } else if self.requires_grad() {
            s.push_str(", requires_grad=True");
        }
        s.push(')');
        f.write_str(&s)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor(#{} {} = {}{}, created at {})",
            self.id(),
            self.ty(),
            self.op().name(),
            if self.is_realized() {
                " [realised]"
            } else {
                ""
            },
            self.loc()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(shape: &[usize], v: &[f64], dt: DType) -> String {
        format_literal(&Literal::from_f64(shape.to_vec(), dt, v))
    }

    #[test]
    fn pytorch_style_formats() {
        assert_eq!(show(&[], &[27.0], DType::F32), "tensor(27.");
        assert_eq!(
            show(&[2, 2], &[3.0, 3.0, 3.0, 3.0], DType::F32),
            "tensor([[3., 3.],\n        [3., 3.]]"
        );
        assert_eq!(
            show(&[3], &[0.5, -1.25, 4.5], DType::F32),
            "tensor([ 0.5000, -1.2500,  4.5000]"
        );
        assert_eq!(
            show(&[2], &[1e-5, 1.0], DType::F32),
            "tensor([1.0000e-05, 1.0000e+00]"
        );
        assert_eq!(
            show(&[3], &[1.0, 0.0, 1.0], DType::Bool),
            "tensor([ True, False,  True]"
        );
        assert_eq!(show(&[2], &[7.0, -3.0], DType::I64), "tensor([ 7, -3]");
        // torch.arange(2000.): integer-valued, but the magnitudes span more than 1000x, so
        // scientific (and the seven entries wrap at 80 columns).
        let big: Vec<f64> = (0..2000).map(|i| i as f64).collect();
        assert_eq!(
            show(&[2000], &big, DType::F32),
            "tensor([0.0000e+00, 1.0000e+00, 2.0000e+00,  ..., 1.9970e+03, 1.9980e+03,\n        1.9990e+03]"
        );
        let big: Vec<f64> = (0..1001).map(|i| i as f64).collect();
        assert_eq!(
            show(&[1001], &big, DType::F32),
            "tensor([   0.,    1.,    2.,  ...,  998.,  999., 1000.]"
        );
        let row: Vec<f64> = (0..10).map(|i| i as f64 * 0.1 - 0.45).collect();
        assert_eq!(
            show(&[1, 10], &row, DType::F32),
            "tensor([[-0.4500, -0.3500, -0.2500, -0.1500, -0.0500,  0.0500,  0.1500,  0.2500,\n          0.3500,  0.4500]]"
        );
        assert_eq!(
            show(&[2, 1, 2], &[1.0, 2.0, 3.0, 4.0], DType::F32),
            "tensor([[[1., 2.]],\n\n        [[3., 4.]]]"
        );
    }
}
