//! The random graph generator of the differential tests, shared with the PTX tests (which
//! emit and assemble every kernel of the same graphs): a seeded generator over the whole op
//! set (elementwise, compare/where/cast, reductions, every movement op, matmul and the conv
//! family), random shapes with sizes of 1 and odd sizes, broadcasting through reshape+expand,
//! and sometimes a bound interior node.

use super::*;
use kiln_ir::{
    BinaryOp, CmpOp, ConvParams, DType, Graph, Literal, NodeId, Op, ReduceOp, SliceAxis,
    TensorType, UnaryOp,
};
use std::collections::HashMap;

pub const SIZES: [usize; 10] = [1, 1, 2, 3, 4, 5, 7, 8, 9, 16];
pub const MAX_NUMEL: usize = 6000;

pub struct Gen<'r> {
    g: Graph,
    rng: &'r mut Rng,
    pool: Vec<NodeId>,
    inputs: Vec<(NodeId, Literal)>,
    /// The graph has ops whose results the JIT only approximates or sums in another order.
    loose: bool,
}

impl Gen<'_> {
    fn shape(&mut self, max_rank: usize) -> Vec<usize> {
        let r = self.rng.below(max_rank + 1);
        (0..r).map(|_| *self.rng.pick(&SIZES)).collect()
    }

    fn dtype(&mut self) -> DType {
        match self.rng.below(10) {
            0 => DType::F64,
            1 => DType::I64,
            2 => DType::Bool,
            _ => DType::F32,
        }
    }

    fn input(&mut self, ty: TensorType) -> NodeId {
        let name = format!("in{}", self.inputs.len());
        let id = self.g.input(name, ty.clone()).unwrap();
        let lit = random_literal(self.rng, ty.dtype, &ty.shape, 2.0);
        self.inputs.push((id, lit));
        id
    }

    fn add(&mut self, r: kiln_ir::Result<NodeId>) -> Option<NodeId> {
        let id = r.ok()?;
        if self.g.ty(id).numel() > MAX_NUMEL {
            return None;
        }
        self.pool.push(id);
        Some(id)
    }

    fn any(&mut self) -> NodeId {
        let i = self.rng.below(self.pool.len());
        // Prefer recent nodes, so graphs are deep rather than wide.
        let j = self.pool.len() - 1 - self.rng.below(self.pool.len().min(4));
        self.pool[if self.rng.chance(0.6) { j } else { i }]
    }

    /// A node of type `ty`: an existing one, a broadcast of a smaller one, a `full`, or a new
    /// input.
    fn like(&mut self, ty: &TensorType) -> NodeId {
        let same: Vec<NodeId> = self
            .pool
            .iter()
            .copied()
            .filter(|&n| self.g.ty(n) == ty)
            .collect();
        match self.rng.below(5) {
            0 | 1 if !same.is_empty() => *self.rng.pick(&same),
            2 => {
                // Broadcast a new input over a random subset of axes.
                let small: Vec<usize> = ty
                    .shape
                    .iter()
                    .map(|&d| if self.rng.chance(0.5) { 1 } else { d })
                    .collect();
                let lead = self.rng.below(small.len() + 1);
                let src = self.input(TensorType::new(ty.dtype, small[lead..].to_vec()));
                self.g.broadcast_to(src, &ty.shape).unwrap()
            }
            3 => {
                let v = *self.rng.pick(&[0.0, 1.0, -0.5, 2.0]);
                self.g.full(v, ty.clone()).unwrap()
            }
            _ => self.input(ty.clone()),
        }
    }

    /// `|x| + 0.5`.
    fn away_from_zero(&mut self, x: NodeId) -> NodeId {
        let a = self.g.unary(UnaryOp::Abs, x).unwrap();
        let h = self.g.full_like(0.5, x).unwrap();
        self.g.add(a, h).unwrap()
    }

    fn step(&mut self) {
        let a = self.any();
        let ty = self.g.ty(a).clone();
        let rank = ty.rank();
        let float = ty.dtype.is_float();
        match self.rng.below(20) {
            0 | 1 if ty.dtype.is_numeric() => {
                let ops: &[UnaryOp] = if float {
                    &[
                        UnaryOp::Neg,
                        UnaryOp::Exp,
                        UnaryOp::Log,
                        UnaryOp::Sqrt,
                        UnaryOp::Recip,
                        UnaryOp::Abs,
                        UnaryOp::Tanh,
                        UnaryOp::Sigmoid,
                    ]
                } else {
                    &[UnaryOp::Neg, UnaryOp::Abs]
                };
                let u = *self.rng.pick(ops);
                // Keep arguments in the functions' domains and away from their poles most
                // of the time: `recip(tiny)` turns a last-bit difference into a large one.
                let arg = match u {
                    UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Recip if self.rng.chance(0.8) => {
                        self.away_from_zero(a)
                    }
                    _ => a,
                };
                if !matches!(u, UnaryOp::Neg | UnaryOp::Abs) {
                    self.loose = true;
                }
                let r = self.g.unary(u, arg);
                self.add(r);
            }
            2..=4 if ty.dtype.is_numeric() => {
                let ops = binary_ops(float);
                let op = *self.rng.pick(ops);
                let mut b = self.like(&ty);
                if matches!(op, BinaryOp::Div | BinaryOp::Pow) {
                    self.loose = true;
                    if self.rng.chance(0.8) {
                        b = self.away_from_zero(b);
                    }
                }
                let r = self.g.binary(op, a, b);
                self.add(r);
            }
            5 => {
                let b = self.like(&ty);
                let c = *self.rng.pick(&[
                    CmpOp::Eq,
                    CmpOp::Ne,
                    CmpOp::Lt,
                    CmpOp::Le,
                    CmpOp::Gt,
                    CmpOp::Ge,
                ]);
                let r = self.g.compare(c, a, b);
                self.add(r);
            }
            6 => {
                let b = self.like(&ty);
                let c = if ty.dtype == DType::Bool {
                    a
                } else {
                    let z = self.like(&ty);
                    self.g.compare(CmpOp::Gt, a, z).unwrap()
                };
                let r = self.g.select(c, a, b);
                self.add(r);
            }
            7 => {
                let d = self.dtype();
                let r = self.g.cast(a, d);
                self.add(r);
            }
            8 | 9 if ty.dtype.is_numeric() && rank > 0 => {
                let axes: Vec<usize> = (0..rank).filter(|_| self.rng.chance(0.5)).collect();
                let axes = if axes.is_empty() {
                    vec![self.rng.below(rank)]
                } else {
                    axes
                };
                let op = if self.rng.chance(0.6) {
                    ReduceOp::Sum
                } else {
                    ReduceOp::Max
                };
                if op == ReduceOp::Sum {
                    self.loose = true;
                }
                let r = self.g.reduce(op, a, axes);
                self.add(r);
            }
            10 => {
                // Reshape: merge two adjacent axes, split one, or add/remove unit axes.
                let mut s = ty.shape.clone();
                match self.rng.below(3) {
                    0 if rank >= 2 => {
                        let i = self.rng.below(rank - 1);
                        let m = s[i] * s[i + 1];
                        s.splice(i..i + 2, [m]);
                    }
                    1 if rank >= 1 => {
                        let i = self.rng.below(rank);
                        let d = s[i];
                        let f = (1..=d).filter(|f| d.is_multiple_of(*f)).collect::<Vec<_>>();
                        let f = *self.rng.pick(&f);
                        s.splice(i..i + 1, [f, d / f]);
                    }
                    _ => {
                        let i = self.rng.below(rank + 1);
                        s.insert(i, 1);
                    }
                }
                let r = self.g.push(Op::Reshape(s), &[a]);
                self.add(r);
            }
            11 if rank >= 2 => {
                let mut perm: Vec<usize> = (0..rank).collect();
                for i in (1..rank).rev() {
                    let j = self.rng.below(i + 1);
                    perm.swap(i, j);
                }
                let r = self.g.permute(a, perm);
                self.add(r);
            }
            12 => {
                // Expand a unit axis (adding one first if there is none).
                let mut src = a;
                let mut s = ty.shape.clone();
                if !s.contains(&1) {
                    let i = self.rng.below(rank + 1);
                    s.insert(i, 1);
                    src = self.g.push(Op::Reshape(s.clone()), &[a]).unwrap();
                }
                let to: Vec<usize> = s
                    .iter()
                    .map(|&d| {
                        if d == 1 {
                            *self.rng.pick(&[1, 2, 3, 5])
                        } else {
                            d
                        }
                    })
                    .collect();
                let r = self.g.push(Op::Expand(to), &[src]);
                self.add(r);
            }
            13 if rank > 0 => {
                let axes = ty
                    .shape
                    .iter()
                    .map(|&d| {
                        let start = self.rng.below(d.div_ceil(2));
                        let end = start + 1 + self.rng.below(d - start);
                        let step = 1 + self.rng.below(3);
                        SliceAxis { start, end, step }
                    })
                    .collect();
                let r = self.g.slice(a, axes);
                self.add(r);
            }
            14 if rank > 0 => {
                let lo: Vec<usize> = (0..rank).map(|_| self.rng.below(3)).collect();
                let hi: Vec<usize> = (0..rank).map(|_| self.rng.below(3)).collect();
                let v = *self.rng.pick(&[0.0, 1.5, -1.0]);
                let r = self.g.pad(a, lo, hi, v);
                self.add(r);
            }
            15 if rank > 0 => {
                let axis = self.rng.below(rank);
                let mut s = ty.shape.clone();
                s[axis] = *self.rng.pick(&[1, 2, 3]);
                let other = TensorType::new(ty.dtype, s);
                let b = self.like(&other);
                let parts = if self.rng.chance(0.5) {
                    vec![a, b]
                } else {
                    vec![b, a, b]
                };
                let r = self.g.concat(&parts, axis);
                self.add(r);
            }
            16 if float && rank >= 2 => {
                self.loose = true;
                let b = if self.rng.chance(0.5) {
                    self.g.transpose_last(a).unwrap()
                } else {
                    let mut s = ty.shape.clone();
                    s[rank - 2] = s[rank - 1];
                    s[rank - 1] = *self.rng.pick(&SIZES);
                    self.input(TensorType::new(ty.dtype, s))
                };
                let r = self.g.matmul(a, b);
                self.add(r);
            }
            17 if float && (3..=5).contains(&rank) => {
                self.loose = true;
                let nd = rank - 2;
                let c = ty.shape[1];
                let groups = if c.is_multiple_of(2) && self.rng.chance(0.3) {
                    2
                } else {
                    1
                };
                let mut p = ConvParams::new(nd);
                for j in 0..nd {
                    p.stride[j] = 1 + self.rng.below(2);
                    p.padding[j] = self.rng.below(2);
                    p.dilation[j] = 1 + self.rng.below(2);
                }
                p.groups = groups;
                let k: Vec<usize> = (0..nd).map(|_| 1 + self.rng.below(3)).collect();
                let cout = groups * (1 + self.rng.below(3));
                let mut ws = vec![cout, c / groups];
                ws.extend(&k);
                let w = self.input(TensorType::new(ty.dtype, ws));
                let Ok(y) = self.g.conv(a, w, p.clone()) else {
                    return;
                };
                if self.add(Ok(y)).is_none() {
                    return;
                }
                match self.rng.below(3) {
                    0 => {
                        // input gradient: conv_transpose of something shaped like y
                        let dy = self.like(&self.g.ty(y).clone());
                        let mut pt = p.clone();
                        let xs = &ty.shape;
                        // output_padding to recover x's size exactly when possible
                        let ys = self.g.shape(y).to_vec();
                        for j in 0..nd {
                            let full =
                                (ys[2 + j] - 1) * p.stride[j] + p.dilation[j] * (k[j] - 1) + 1
                                    - 2 * p.padding[j];
                            pt.output_padding[j] = xs[2 + j].saturating_sub(full);
                        }
                        let r = self.g.conv_transpose(dy, w, pt);
                        self.add(r);
                    }
                    1 => {
                        let dy = self.like(&self.g.ty(y).clone());
                        let r = self.g.conv_weight(a, dy, p, k);
                        self.add(r);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// Builds graph number `seed`; returns it with its input bindings and the wanted nodes.
pub fn build(seed: u64) -> (Graph, Vec<(NodeId, Literal)>, Vec<NodeId>, bool) {
    let mut rng = Rng::new(seed);
    let mut gen = Gen {
        g: Graph::new(),
        rng: &mut rng,
        pool: Vec::new(),
        inputs: Vec::new(),
        loose: false,
    };
    let n_in = 1 + gen.rng.below(2);
    for _ in 0..n_in {
        let d = gen.dtype();
        let s = gen.shape(4);
        let x = gen.input(TensorType::new(d, s));
        gen.pool.push(x);
    }
    let steps = 3 + gen.rng.below(14);
    for _ in 0..steps {
        gen.step();
    }
    // Want every node nobody uses (so nothing built is dead), and a random one.
    let mut wanted: Vec<NodeId> = gen
        .pool
        .iter()
        .copied()
        .filter(|&n| gen.g.users(n).is_empty())
        .collect();
    let extra = gen.any();
    wanted.push(extra);
    let loose = gen.loose;
    let mut inputs = gen.inputs;
    let g = gen.g;
    // Sometimes bind an interior node to its value (a realised activation).
    if rng.chance(0.2) {
        let interior: Vec<NodeId> = g
            .node_ids()
            .into_iter()
            .filter(|&n| !g.node(n).op.is_leaf())
            .collect();
        if !interior.is_empty() {
            let n = *rng.pick(&interior);
            let b: HashMap<NodeId, &Literal> = inputs.iter().map(|(i, l)| (*i, l)).collect();
            if let Ok(mut v) = kiln_ir::interp::eval(&g, &b, &[n]) {
                inputs.push((n, v.remove(0)));
            }
        }
    }
    (g, inputs, wanted, loose)
}

/// The binary ops defined on a dtype: all of them on floats; no division or power on
/// integers (whose division by zero has no value to compare).
pub fn binary_ops(float: bool) -> &'static [BinaryOp] {
    if float {
        &[
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Max,
            BinaryOp::Min,
            BinaryOp::Pow,
        ]
    } else {
        &[
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Max,
            BinaryOp::Min,
        ]
    }
}
