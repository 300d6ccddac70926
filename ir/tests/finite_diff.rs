//! Finite-difference checks, in f64, of every rule of the autodiff rule table.
//!
//! Each case builds a small graph on randomly drawn shapes and values, differentiates
//! `L = sum(out * cot)` for a random cotangent `cot` with [`grad`], evaluates the gradient with
//! the reference interpreter and compares it with central differences of `L` with respect to
//! every element of every parameter. Inputs are kept away from kinks (`abs` at 0, ties of
//! `max`/`min`/`amax`, the domains of `sqrt`, `log` and `pow`), where the two legitimately
//! differ.

use kiln_ir::autodiff::{grad, grad_of};
use kiln_ir::interp::eval;
use kiln_ir::shape::numel;
use kiln_ir::*;
use std::collections::HashMap;

// ----- seeded random numbers ---------------------------------------------------------------

/// SplitMix64: tiny, seedable and good enough for test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Uniform in `lo..=hi`.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
    fn values(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }
    /// Values with `lo <= |v| <= hi` and a random sign.
    fn signed(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let v = self.range(lo, hi);
                if self.coin() {
                    v
                } else {
                    -v
                }
            })
            .collect()
    }
    /// A shape of the given rank with sizes in `1..=max` (size 1 is drawn often).
    fn shape(&mut self, rank: usize, max: usize) -> Vec<usize> {
        (0..rank)
            .map(|_| {
                if self.int(0, 3) == 0 {
                    1
                } else {
                    self.int(1, max)
                }
            })
            .collect()
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.int(0, i);
            v.swap(i, j);
        }
    }
    /// `n` distinct values, at least `gap` apart, in random order (no ties for max).
    fn distinct(&mut self, n: usize, gap: f64) -> Vec<f64> {
        let mut v: Vec<f64> = (0..n)
            .map(|i| (i as f64 - n as f64 / 2.0) * gap + self.range(0.0, gap / 2.0))
            .collect();
        self.shuffle(&mut v);
        v
    }
}

// ----- the checker ---------------------------------------------------------------------------

fn f64t(shape: &[usize]) -> TensorType {
    TensorType::new(DType::F64, shape.to_vec())
}

fn lit(shape: &[usize], values: Vec<f64>) -> Literal {
    Literal::new(shape.to_vec(), Data::F64(values)).unwrap()
}

/// A graph under construction and the values of its parameters.
struct Case {
    g: Graph,
    params: Vec<(NodeId, Literal)>,
}

/// Step and tolerance of the default check.
const H: f64 = 1e-6;
const TOL: f64 = 1e-6;

impl Case {
    fn new() -> Case {
        Case {
            g: Graph::new(),
            params: Vec::new(),
        }
    }

    /// A differentiated f64 parameter with the given values.
    fn param(&mut self, shape: &[usize], values: Vec<f64>) -> NodeId {
        let name = format!("p{}", self.params.len());
        let id = self.g.param(name, f64t(shape)).unwrap();
        self.params.push((id, lit(shape, values)));
        id
    }

    /// A constant (not differentiated).
    fn constant(&mut self, shape: &[usize], values: Vec<f64>) -> NodeId {
        self.g.constant(lit(shape, values)).unwrap()
    }

    /// `sum(eval(out) * cot)` with the parameters bound to `params`.
    fn loss(fwd: &Graph, out: NodeId, params: &[(NodeId, Literal)], cot: &[f64]) -> f64 {
        let bindings: HashMap<NodeId, &Literal> = params.iter().map(|(id, l)| (*id, l)).collect();
        let v = eval(fwd, &bindings, &[out]).unwrap();
        let v = v[0].to_f64_vec();
        v.iter().zip(cot).map(|(a, b)| a * b).sum()
    }

    /// Checks the gradient of every parameter with the default step and tolerance; returns
    /// which parameters got a gradient.
    fn check(self, name: &str, out: NodeId, rng: &mut Rng) -> Vec<bool> {
        self.check_with(name, out, rng, H, TOL)
    }

    fn check_with(mut self, name: &str, out: NodeId, rng: &mut Rng, h: f64, tol: f64) -> Vec<bool> {
        let fwd = self.g.clone();
        let ty = self.g.ty(out).clone();
        assert_eq!(ty.dtype, DType::F64, "{name}: output must be f64");
        let cot_vals = rng.values(ty.numel(), -1.0, 1.0);
        let cot_lit = lit(&ty.shape, cot_vals.clone());
        let cot = self.g.input("cot", ty.clone()).unwrap();
        let wrt: Vec<NodeId> = self.params.iter().map(|(id, _)| *id).collect();
        let grads = grad(&mut self.g, &[(out, cot)], &wrt)
            .unwrap_or_else(|e| panic!("{name}: grad failed: {e}"));

        let mut bindings: HashMap<NodeId, &Literal> =
            self.params.iter().map(|(id, l)| (*id, l)).collect();
        bindings.insert(cot, &cot_lit);
        let wanted: Vec<NodeId> = grads.iter().flatten().copied().collect();
        let mut values = eval(&self.g, &bindings, &wanted)
            .unwrap_or_else(|e| panic!("{name}: evaluating the gradient failed: {e}"))
            .into_iter();

        for (k, ((id, value), gk)) in self.params.iter().zip(&grads).enumerate() {
            let ad: Vec<f64> = match gk {
                Some(gid) => {
                    assert_eq!(self.g.ty(*gid), self.g.ty(*id), "{name}: type of grad {k}");
                    let v = values.next().unwrap();
                    assert_eq!(v.shape, value.shape, "{name}: shape of grad {k}");
                    v.to_f64_vec()
                }
                None => vec![0.0; value.numel()],
            };
            let base = value.to_f64_vec();
            let mut fd = vec![0.0; base.len()];
            let mut params = self.params.clone();
            for i in 0..base.len() {
                let mut plus = base.clone();
                plus[i] += h;
                params[k].1 = lit(&value.shape, plus);
                let lp = Case::loss(&fwd, out, &params, &cot_vals);
                let mut minus = base.clone();
                minus[i] -= h;
                params[k].1 = lit(&value.shape, minus);
                let lm = Case::loss(&fwd, out, &params, &cot_vals);
                fd[i] = (lp - lm) / (2.0 * h);
            }
            let err = ad
                .iter()
                .zip(&fd)
                .map(|(a, f)| (a - f).abs())
                .fold(0.0, f64::max);
            let scale = ad.iter().chain(&fd).map(|v| v.abs()).fold(0.0, f64::max);
            assert!(
                err.is_finite() && err <= tol * scale,
                "{name}: parameter {k} of shape {:?}: max abs error {err:e} vs max abs value \
                 {scale:e} (relative {:e} > {tol:e})\n  autodiff: {ad:?}\n  finite differences: {fd:?}",
                value.shape,
                err / scale
            );
        }
        grads.iter().map(|g| g.is_some()).collect()
    }
}

// ----- elementwise ---------------------------------------------------------------------------

#[test]
fn unary_ops() {
    let mut rng = Rng::new(1);
    let ops = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Recip,
        UnaryOp::Abs,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
    ];
    for op in ops {
        for draw in 0..4 {
            let rank = rng.int(0, 3);
            let shape = rng.shape(rank, 4);
            let n = numel(&shape);
            let x = match op {
                UnaryOp::Log | UnaryOp::Sqrt => rng.values(n, 0.5, 2.0),
                UnaryOp::Recip | UnaryOp::Abs => rng.signed(n, 0.2, 2.0),
                UnaryOp::Exp | UnaryOp::Tanh | UnaryOp::Sigmoid => rng.values(n, -2.0, 2.0),
                UnaryOp::Neg => rng.values(n, -3.0, 3.0),
            };
            let mut c = Case::new();
            let xp = c.param(&shape, x);
            let y = c.g.unary(op, xp).unwrap();
            c.check(&format!("{op:?} {shape:?} #{draw}"), y, &mut rng);
        }
    }
}

#[test]
fn binary_ops() {
    let mut rng = Rng::new(2);
    let ops = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
    ];
    for op in ops {
        for draw in 0..4 {
            let rank = rng.int(0, 3);
            let shape = rng.shape(rank, 4);
            let n = numel(&shape);
            let (a, b) = match op {
                BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul => {
                    (rng.values(n, -2.0, 2.0), rng.values(n, -2.0, 2.0))
                }
                BinaryOp::Div => (rng.values(n, -2.0, 2.0), rng.signed(n, 0.3, 2.0)),
                // b = a +- a gap: no ties
                BinaryOp::Max | BinaryOp::Min => {
                    let a = rng.values(n, -2.0, 2.0);
                    let d = rng.signed(n, 0.1, 1.0);
                    let b = a.iter().zip(&d).map(|(x, y)| x + y).collect();
                    (a, b)
                }
                BinaryOp::Pow => (rng.values(n, 0.5, 2.0), rng.values(n, -2.0, 2.0)),
            };
            let mut c = Case::new();
            let ap = c.param(&shape, a);
            let bp = c.param(&shape, b);
            let y = c.g.binary(op, ap, bp).unwrap();
            c.check(&format!("{op:?} {shape:?} #{draw}"), y, &mut rng);
        }
    }
}

/// A node used twice by one op and several times overall: contributions are summed.
#[test]
fn reuse_accumulates() {
    let mut rng = Rng::new(3);
    for draw in 0..4 {
        let shape = rng.shape(2, 4);
        let n = numel(&shape);
        let mut c = Case::new();
        let x = c.param(&shape, rng.values(n, -2.0, 2.0));
        let w = c.param(&shape, rng.values(n, -2.0, 2.0));
        let xx = c.g.mul(x, x).unwrap();
        let t = c.g.unary(UnaryOp::Tanh, x).unwrap();
        let s = c.g.add(xx, t).unwrap();
        let s = c.g.mul(s, w).unwrap();
        let y = c.g.sub(s, x).unwrap();
        c.check(&format!("reuse {shape:?} #{draw}"), y, &mut rng);
    }
}

/// `pow` with integer exponent tensors, including the exponent 0 (PyTorch's zero gradient).
#[test]
fn pow_special_exponents() {
    let mut rng = Rng::new(4);
    for draw in 0..3 {
        let shape = rng.shape(2, 4);
        let n = numel(&shape);
        let mut c = Case::new();
        let a = c.param(&shape, rng.signed(n, 0.5, 2.0));
        let e: Vec<f64> = (0..n).map(|_| rng.int(0, 3) as f64).collect();
        let b = c.constant(&shape, e);
        let y = c.g.binary(BinaryOp::Pow, a, b).unwrap();
        c.check(&format!("pow int exponent {shape:?} #{draw}"), y, &mut rng);
    }
}

#[test]
fn compare_and_where() {
    let mut rng = Rng::new(5);
    let cmps = [
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ];
    for (draw, cmp) in cmps.into_iter().enumerate() {
        let rank = rng.int(0, 3);
        let shape = rng.shape(rank, 4);
        let n = numel(&shape);
        let mut c = Case::new();
        let x = c.param(&shape, rng.values(n, -2.0, 2.0));
        // y differs from x by a margin, so small steps do not flip the condition
        let d = rng.signed(n, 0.1, 1.0);
        let yv: Vec<f64> = c.params[0]
            .1
            .to_f64_vec()
            .iter()
            .zip(&d)
            .map(|(a, b)| a + b)
            .collect();
        let y = c.param(&shape, yv);
        let a = c.param(&shape, rng.values(n, -2.0, 2.0));
        let b = c.param(&shape, rng.values(n, -2.0, 2.0));
        let cond = c.g.compare(cmp, x, y).unwrap();
        let ea = c.g.unary(UnaryOp::Exp, a).unwrap();
        let out = c.g.select(cond, ea, b).unwrap();
        let got = c.check(&format!("where({cmp:?}) {shape:?} #{draw}"), out, &mut rng);
        assert_eq!(got, [false, false, true, true], "where({cmp:?})");
    }
    // relu as where(x > 0, x, 0): x in both the condition and a branch
    for draw in 0..3 {
        let shape = rng.shape(2, 5);
        let n = numel(&shape);
        let mut c = Case::new();
        let x = c.param(&shape, rng.signed(n, 0.1, 2.0));
        let zero = c.g.full(0.0, f64t(&shape)).unwrap();
        let pos = c.g.compare(CmpOp::Gt, x, zero).unwrap();
        let y = c.g.select(pos, x, zero).unwrap();
        c.check(&format!("relu {shape:?} #{draw}"), y, &mut rng);
    }
}

#[test]
fn casts() {
    let mut rng = Rng::new(6);
    for draw in 0..3 {
        let shape = rng.shape(2, 4);
        let n = numel(&shape);
        // f64 -> f64 (no-op cast)
        let mut c = Case::new();
        let x = c.param(&shape, rng.values(n, -2.0, 2.0));
        let y = c.g.cast(x, DType::F64).unwrap();
        let y = c.g.unary(UnaryOp::Tanh, y).unwrap();
        c.check(&format!("cast f64->f64 {shape:?} #{draw}"), y, &mut rng);

        // f64 -> f32 -> f64: precision is that of f32, so a larger step and tolerance
        let mut c = Case::new();
        let x = c.param(&shape, rng.values(n, -2.0, 2.0));
        let y = c.g.cast(x, DType::F32).unwrap();
        let y = c.g.unary(UnaryOp::Tanh, y).unwrap();
        let y = c.g.cast(y, DType::F64).unwrap();
        c.check_with(
            &format!("cast f64->f32->f64 {shape:?} #{draw}"),
            y,
            &mut rng,
            1e-3,
            1e-3,
        );

        // through an integer: no gradient (inputs away from integers: piecewise constant)
        let mut c = Case::new();
        let xv: Vec<f64> = (0..n)
            .map(|_| rng.int(0, 4) as f64 - 2.0 + rng.range(0.2, 0.8))
            .collect();
        let x = c.param(&shape, xv);
        let w = c.param(&shape, rng.values(n, -2.0, 2.0));
        let i = c.g.cast(x, DType::I64).unwrap();
        let f = c.g.cast(i, DType::F64).unwrap();
        let y = c.g.mul(f, w).unwrap();
        let got = c.check(&format!("cast through i64 {shape:?} #{draw}"), y, &mut rng);
        assert_eq!(got, [false, true]);
    }
}

// ----- reductions ----------------------------------------------------------------------------

fn random_axes(rng: &mut Rng, rank: usize) -> Vec<usize> {
    (0..rank).filter(|_| rng.coin()).collect()
}

#[test]
fn reduce_sum() {
    let mut rng = Rng::new(7);
    for draw in 0..8 {
        let rank = rng.int(1, 4);
        let shape = rng.shape(rank, 4);
        let mut axes = random_axes(&mut rng, rank);
        if axes.is_empty() && draw % 2 == 0 {
            axes.push(rng.int(0, rank - 1));
        }
        let n = numel(&shape);
        let mut c = Case::new();
        let x = c.param(&shape, rng.values(n, -2.0, 2.0));
        let y = c.g.reduce(ReduceOp::Sum, x, axes.clone()).unwrap();
        c.check(
            &format!("reduce_sum {shape:?} {axes:?} #{draw}"),
            y,
            &mut rng,
        );
    }
}

#[test]
fn reduce_max() {
    let mut rng = Rng::new(8);
    for draw in 0..8 {
        let rank = rng.int(1, 4);
        let shape = rng.shape(rank, 4);
        let mut axes = random_axes(&mut rng, rank);
        if axes.is_empty() {
            axes.push(rng.int(0, rank - 1));
        }
        let n = numel(&shape);
        let mut c = Case::new();
        let x = c.param(&shape, rng.distinct(n, 0.1));
        let y = c.g.reduce(ReduceOp::Max, x, axes.clone()).unwrap();
        c.check(
            &format!("reduce_max {shape:?} {axes:?} #{draw}"),
            y,
            &mut rng,
        );
    }
}

// ----- movement ------------------------------------------------------------------------------

#[test]
fn reshape() {
    let mut rng = Rng::new(9);
    for draw in 0..6 {
        let rank = rng.int(0, 4);
        let shape = rng.shape(rank, 4);
        // same numel: a shuffle of the sizes, with 1s inserted, or flattened
        let mut to = shape.clone();
        rng.shuffle(&mut to);
        if rng.coin() {
            let at = rng.int(0, to.len());
            to.insert(at, 1);
        }
        if draw == 0 {
            to = vec![numel(&shape)];
        }
        let n = numel(&shape);
        let mut c = Case::new();
        let x = c.param(&shape, rng.values(n, -2.0, 2.0));
        let t = c.g.unary(UnaryOp::Tanh, x).unwrap();
        let y = c.g.push(Op::Reshape(to.clone()), &[t]).unwrap();
        c.check(&format!("reshape {shape:?} -> {to:?} #{draw}"), y, &mut rng);
    }
}

#[test]
fn permute() {
    let mut rng = Rng::new(10);
    for draw in 0..6 {
        let rank = rng.int(1, 4);
        let shape = rng.shape(rank, 4);
        let mut perm: Vec<usize> = (0..rank).collect();
        rng.shuffle(&mut perm);
        let n = numel(&shape);
        let mut c = Case::new();
        let x = c.param(&shape, rng.values(n, -2.0, 2.0));
        let y = c.g.permute(x, perm.clone()).unwrap();
        c.check(&format!("permute {shape:?} {perm:?} #{draw}"), y, &mut rng);
    }
}

#[test]
fn expand_and_broadcast() {
    let mut rng = Rng::new(11);
    for draw in 0..6 {
        let rank = rng.int(1, 4);
        let to = rng.shape(rank, 4);
        let from: Vec<usize> = to.iter().map(|&d| if rng.coin() { 1 } else { d }).collect();
        let n = numel(&from);
        let mut c = Case::new();
        let x = c.param(&from, rng.values(n, -2.0, 2.0));
        let y = c.g.push(Op::Expand(to.clone()), &[x]).unwrap();
        c.check(&format!("expand {from:?} -> {to:?} #{draw}"), y, &mut rng);
    }
    // NumPy-style broadcasting of a lower-rank operand inside a binary op
    for draw in 0..4 {
        let rank = rng.int(1, 3);
        let full = rng.shape(rank, 4);
        let drop = rng.int(0, rank);
        let small: Vec<usize> = full[drop..]
            .iter()
            .map(|&d| if rng.coin() { 1 } else { d })
            .collect();
        let mut c = Case::new();
        let a = c.param(&full, rng.values(numel(&full), -2.0, 2.0));
        let b = c.param(&small, rng.values(numel(&small), -2.0, 2.0));
        let bb = c.g.broadcast_to(b, &full).unwrap();
        let y = c.g.mul(a, bb).unwrap();
        c.check(
            &format!("broadcast mul {full:?} * {small:?} #{draw}"),
            y,
            &mut rng,
        );
    }
}

#[test]
fn slice() {
    let mut rng = Rng::new(12);
    for draw in 0..10 {
        let rank = rng.int(1, 3);
        let shape: Vec<usize> = (0..rank).map(|_| rng.int(1, 7)).collect();
        let axes: Vec<SliceAxis> = shape
            .iter()
            .map(|&d| {
                let start = rng.int(0, d - 1);
                let end = rng.int(start + 1, d);
                let step = if rng.coin() { 1 } else { rng.int(2, 3) };
                SliceAxis { start, end, step }
            })
            .collect();
        let n = numel(&shape);
        let mut c = Case::new();
        let x = c.param(&shape, rng.values(n, -2.0, 2.0));
        let y = c.g.slice(x, axes.clone()).unwrap();
        c.check(&format!("slice {shape:?} {axes:?} #{draw}"), y, &mut rng);
    }
    // strided slices whose end is not on the stride, and steps longer than the axis
    let mut c = Case::new();
    let x = c.param(&[7, 5], rng.values(35, -2.0, 2.0));
    let y =
        c.g.slice(
            x,
            vec![
                SliceAxis {
                    start: 1,
                    end: 6,
                    step: 2,
                },
                SliceAxis {
                    start: 2,
                    end: 5,
                    step: 9,
                },
            ],
        )
        .unwrap();
    c.check("slice [7,5] 1..6:2, 2..5:9", y, &mut rng);
}

#[test]
fn pad() {
    let mut rng = Rng::new(13);
    for draw in 0..6 {
        let rank = rng.int(1, 3);
        let shape = rng.shape(rank, 4);
        let lo: Vec<usize> = (0..rank).map(|_| rng.int(0, 2)).collect();
        let hi: Vec<usize> = (0..rank).map(|_| rng.int(0, 2)).collect();
        let value = rng.range(-1.0, 1.0);
        let n = numel(&shape);
        let mut c = Case::new();
        let x = c.param(&shape, rng.values(n, -2.0, 2.0));
        let y = c.g.pad(x, lo.clone(), hi.clone(), value).unwrap();
        // square it so the pad value enters the loss non-trivially
        let y = c.g.mul(y, y).unwrap();
        c.check(&format!("pad {shape:?} {lo:?} {hi:?} #{draw}"), y, &mut rng);
    }
}

#[test]
fn concat() {
    let mut rng = Rng::new(14);
    for draw in 0..6 {
        let rank = rng.int(1, 3);
        let axis = rng.int(0, rank - 1);
        let base = rng.shape(rank, 3);
        let parts = rng.int(1, 3);
        let mut c = Case::new();
        let mut ids = Vec::new();
        let mut shapes = Vec::new();
        for _ in 0..parts {
            let mut s = base.clone();
            s[axis] = rng.int(1, 3);
            ids.push(c.param(&s, rng.values(numel(&s), -2.0, 2.0)));
            shapes.push(s);
        }
        let y = c.g.concat(&ids, axis).unwrap();
        c.check(
            &format!("concat {shapes:?} axis {axis} #{draw}"),
            y,
            &mut rng,
        );
    }
    // the same operand twice
    let mut c = Case::new();
    let x = c.param(&[2, 3], rng.values(6, -2.0, 2.0));
    let y = c.g.concat(&[x, x], 1).unwrap();
    c.check("concat [x, x]", y, &mut rng);
}

// ----- matmul and convolutions ---------------------------------------------------------------

#[test]
fn matmul() {
    let mut rng = Rng::new(15);
    for draw in 0..8 {
        let brank = rng.int(0, 2);
        let batch = rng.shape(brank, 3);
        let (m, k, n) = (rng.int(1, 4), rng.int(1, 4), rng.int(1, 4));
        let sa: Vec<usize> = batch.iter().copied().chain([m, k]).collect();
        let sb: Vec<usize> = batch.iter().copied().chain([k, n]).collect();
        let mut c = Case::new();
        let a = c.param(&sa, rng.values(numel(&sa), -2.0, 2.0));
        let b = c.param(&sb, rng.values(numel(&sb), -2.0, 2.0));
        let y = c.g.matmul(a, b).unwrap();
        c.check(&format!("matmul {sa:?} x {sb:?} #{draw}"), y, &mut rng);
    }
}

/// Convolution parameters for `nd` spatial dims; the first draws force the features.
fn conv_params(rng: &mut Rng, nd: usize, draw: usize) -> ConvParams {
    let mut p = ConvParams::new(nd);
    match draw {
        0 => {}
        1 => {
            p.stride = vec![2; nd];
            p.padding = vec![1; nd];
        }
        2 => {
            p.dilation = vec![2; nd];
            p.groups = 2;
        }
        3 => {
            p.stride = (0..nd).map(|j| 3 - j % 2).collect();
            p.padding = (0..nd).map(|j| 2 - j % 3).collect();
            p.dilation = (0..nd).map(|j| 2 + j % 2).collect();
            p.groups = 3;
        }
        _ => {
            p.stride = (0..nd).map(|_| rng.int(1, 3)).collect();
            p.padding = (0..nd).map(|_| rng.int(0, 2)).collect();
            p.dilation = (0..nd).map(|_| rng.int(1, 2)).collect();
            p.groups = rng.int(1, 2);
        }
    }
    p
}

fn draws_for(nd: usize) -> usize {
    match nd {
        1 => 8,
        2 => 7,
        _ => 5,
    }
}

fn kernel_for(rng: &mut Rng, nd: usize) -> Vec<usize> {
    let kmax = if nd == 3 { 2 } else { 3 };
    (0..nd).map(|_| rng.int(1, kmax)).collect()
}

/// Input spatial sizes for which a `conv` with kernel `k` gives at least one output.
fn conv_input(rng: &mut Rng, p: &ConvParams, k: &[usize]) -> Vec<usize> {
    let nd = k.len();
    let slack = if nd == 3 { 2 } else { 4 };
    (0..nd)
        .map(|j| {
            let span = p.dilation[j] * (k[j] - 1) + 1;
            span.saturating_sub(2 * p.padding[j]).max(1) + rng.int(0, slack)
        })
        .collect()
}

fn spatial(n: usize, c: usize, s: &[usize]) -> Vec<usize> {
    [n, c].into_iter().chain(s.iter().copied()).collect()
}

#[test]
fn conv() {
    let mut rng = Rng::new(16);
    for nd in 1..=3 {
        for draw in 0..draws_for(nd) {
            let p = conv_params(&mut rng, nd, draw);
            let k = kernel_for(&mut rng, nd);
            let i = conv_input(&mut rng, &p, &k);
            let n = rng.int(1, 2);
            let cin = p.groups * rng.int(1, 2);
            let cout = p.groups * rng.int(1, 2);
            let xs = spatial(n, cin, &i);
            let ws = spatial(cout, cin / p.groups, &k);
            let mut c = Case::new();
            let x = c.param(&xs, rng.values(numel(&xs), -1.0, 1.0));
            let w = c.param(&ws, rng.values(numel(&ws), -1.0, 1.0));
            let y = c.g.conv(x, w, p.clone()).unwrap();
            c.check(&format!("conv{nd}d x{xs:?} w{ws:?} {p:?}"), y, &mut rng);
        }
    }
}

#[test]
fn conv_transpose() {
    let mut rng = Rng::new(17);
    for nd in 1..=3 {
        for draw in 0..draws_for(nd) + 1 {
            let mut p = conv_params(&mut rng, nd, draw.min(draws_for(nd) - 1));
            if draw == draws_for(nd) {
                // output_padding >= stride, allowed because dilation > stride
                p = ConvParams::new(nd);
                p.dilation = vec![3; nd];
                p.stride = vec![1; nd];
                p.padding = vec![1; nd];
            }
            let k = kernel_for(&mut rng, nd);
            p.output_padding = (0..nd)
                .map(|j| {
                    let lim = p.stride[j].max(p.dilation[j]);
                    if draw == draws_for(nd) {
                        lim - 1
                    } else {
                        rng.int(0, lim - 1)
                    }
                })
                .collect();
            // input sizes for which the output is non-empty
            let slack = if nd == 3 { 2 } else { 3 };
            let i: Vec<usize> = (0..nd)
                .map(|j| {
                    let mut i = 1 + rng.int(0, slack);
                    while (i - 1) * p.stride[j] + p.dilation[j] * (k[j] - 1) + p.output_padding[j]
                        < 2 * p.padding[j]
                    {
                        i += 1;
                    }
                    i
                })
                .collect();
            let n = rng.int(1, 2);
            let cin = p.groups * rng.int(1, 2);
            let cout = p.groups * rng.int(1, 2);
            let xs = spatial(n, cin, &i);
            let ws = spatial(cin, cout / p.groups, &k);
            let mut c = Case::new();
            let x = c.param(&xs, rng.values(numel(&xs), -1.0, 1.0));
            let w = c.param(&ws, rng.values(numel(&ws), -1.0, 1.0));
            let y = c.g.conv_transpose(x, w, p.clone()).unwrap();
            c.check(
                &format!("conv_transpose{nd}d x{xs:?} w{ws:?} {p:?}"),
                y,
                &mut rng,
            );
        }
    }
}

#[test]
fn conv_weight() {
    let mut rng = Rng::new(18);
    for nd in 1..=3 {
        for draw in 0..draws_for(nd) {
            let p = conv_params(&mut rng, nd, draw);
            let k = kernel_for(&mut rng, nd);
            let i = conv_input(&mut rng, &p, &k);
            let o: Vec<usize> = (0..nd)
                .map(|j| kiln_ir::infer::conv_out_size(i[j], k[j], &p, j).unwrap())
                .collect();
            let n = rng.int(1, 2);
            let cin = p.groups * rng.int(1, 2);
            let cout = p.groups * rng.int(1, 2);
            let xs = spatial(n, cin, &i);
            let dys = spatial(n, cout, &o);
            let mut c = Case::new();
            let x = c.param(&xs, rng.values(numel(&xs), -1.0, 1.0));
            let dy = c.param(&dys, rng.values(numel(&dys), -1.0, 1.0));
            let y = c.g.conv_weight(x, dy, p.clone(), k.clone()).unwrap();
            c.check(
                &format!("conv_weight{nd}d x{xs:?} dy{dys:?} k{k:?} {p:?}"),
                y,
                &mut rng,
            );
        }
    }
}

// ----- compositions --------------------------------------------------------------------------

/// Softmax cross-entropy of a small MLP, built from primitives as the front end does: leaves
/// of every kind (param, const, full), broadcasting, reduce max, several users per node.
#[test]
fn mlp_softmax_cross_entropy() {
    let mut rng = Rng::new(19);
    for draw in 0..3 {
        let (b, d, h, k) = (rng.int(1, 3), rng.int(1, 4), rng.int(1, 4), rng.int(2, 4));
        let mut c = Case::new();
        let w1 = c.param(&[d, h], rng.values(d * h, -1.0, 1.0));
        let b1 = c.param(&[h], rng.values(h, -1.0, 1.0));
        let w2 = c.param(&[h, k], rng.values(h * k, -1.0, 1.0));
        let x = c.constant(&[b, d], rng.values(b * d, -1.0, 1.0));
        let onehot: Vec<f64> = (0..b)
            .flat_map(|_| {
                let t = rng.int(0, k - 1);
                (0..k).map(move |j| if j == t { 1.0 } else { 0.0 })
            })
            .collect();
        let target = c.constant(&[b, k], onehot);
        let g = &mut c.g;
        let z = g.matmul(x, w1).unwrap();
        let bb = g.broadcast_to(b1, &[b, h]).unwrap();
        let z = g.add(z, bb).unwrap();
        let a = g.unary(UnaryOp::Tanh, z).unwrap();
        let logits = g.matmul(a, w2).unwrap();
        let m = g.reduce(ReduceOp::Max, logits, vec![1]).unwrap();
        let me = g.expand(m, vec![b, k]).unwrap();
        let s = g.sub(logits, me).unwrap();
        let e = g.unary(UnaryOp::Exp, s).unwrap();
        let se = g.reduce(ReduceOp::Sum, e, vec![1]).unwrap();
        let lse = g.unary(UnaryOp::Log, se).unwrap();
        let lse = g.expand(lse, vec![b, k]).unwrap();
        let logp = g.sub(s, lse).unwrap();
        let picked = g.mul(logp, target).unwrap();
        let total = g.reduce(ReduceOp::Sum, picked, vec![0, 1]).unwrap();
        let scale = g.full(-1.0 / b as f64, f64t(&[1, 1])).unwrap();
        let loss = g.mul(total, scale).unwrap();
        c.check(&format!("mlp b{b} d{d} h{h} k{k} #{draw}"), loss, &mut rng);
    }
}

/// `grad_of` seeds with ones: compare against `grad` with an explicit ones seed by FD.
#[test]
fn grad_of_matches_finite_differences() {
    let mut rng = Rng::new(20);
    let shape = [3, 2];
    let xv = rng.values(6, -1.0, 1.0);
    let mut g = Graph::new();
    let x = g.param("x", f64t(&shape)).unwrap();
    let t = g.unary(UnaryOp::Sigmoid, x).unwrap();
    let y = g.mul(t, x).unwrap();
    let fwd = g.clone();
    let gx = grad_of(&mut g, y, &[x]).unwrap()[0].unwrap();
    let xl = lit(&shape, xv.clone());
    let b: HashMap<NodeId, &Literal> = [(x, &xl)].into_iter().collect();
    let ad = eval(&g, &b, &[gx]).unwrap()[0].to_f64_vec();
    for i in 0..6 {
        let f = |d: f64| {
            let mut v = xv.clone();
            v[i] += d;
            let l = lit(&shape, v);
            let b: HashMap<NodeId, &Literal> = [(x, &l)].into_iter().collect();
            eval(&fwd, &b, &[y]).unwrap()[0]
                .to_f64_vec()
                .iter()
                .sum::<f64>()
        };
        let fd = (f(H) - f(-H)) / (2.0 * H);
        assert!(
            (fd - ad[i]).abs() <= TOL * fd.abs().max(1.0),
            "{fd} vs {}",
            ad[i]
        );
    }
}
