//! Shapes that stress the edges of the index arithmetic: unit and odd sizes, empty tensors,
//! scalars, slices with steps, pads (also of pads), concats, vector tails of every length.
//! Each graph runs under the bounds-checked kernel IR interpreter (an out-of-bounds index or
//! a wrong guard is an error there) and the JIT, both against the reference interpreter.

mod common;
use common::*;
use kiln_ir::{
    BinaryOp, CmpOp, DType, Graph, Literal, NodeId, ReduceOp, SliceAxis, TensorType, UnaryOp,
};
use std::collections::HashMap;

/// Builds a graph with inputs of the given types, applies `f`, checks every node `f` returns.
fn run(types: &[(DType, &[usize])], f: impl FnOnce(&mut Graph, &[NodeId]) -> Vec<NodeId>) {
    let mut rng = Rng::new(7);
    let mut g = Graph::new();
    let mut ins = Vec::new();
    let mut lits = Vec::new();
    for (i, (d, s)) in types.iter().enumerate() {
        ins.push(
            g.input(format!("x{i}"), TensorType::new(*d, s.to_vec()))
                .unwrap(),
        );
        lits.push(random_literal(&mut rng, *d, s, 3.0));
    }
    let wanted = f(&mut g, &ins);
    let binds: HashMap<NodeId, &Literal> = ins.iter().copied().zip(lits.iter()).collect();
    if let Err(e) = check(&g, &binds, &wanted, 1e-5) {
        panic!("{e}");
    }
}

fn sl(start: usize, end: usize, step: usize) -> SliceAxis {
    SliceAxis { start, end, step }
}

#[test]
fn unit_axes_and_scalars() {
    run(&[(DType::F32, &[1, 1, 1]), (DType::F32, &[])], |g, x| {
        let a = g.unary(UnaryOp::Neg, x[0]).unwrap();
        let e = g.expand(a, vec![1, 5, 1]).unwrap();
        let s = g.reduce(ReduceOp::Sum, e, vec![0, 1, 2]).unwrap();
        let r = g.reshape(x[1], vec![1, 1, 1]).unwrap();
        let m = g.mul(a, r).unwrap();
        let sc = g.add(x[1], x[1]).unwrap();
        vec![e, s, m, sc]
    });
}

#[test]
fn odd_sizes_permute_and_reduce_every_axis() {
    run(&[(DType::F32, &[3, 5, 7])], |g, x| {
        let p = g.permute(x[0], vec![2, 0, 1]).unwrap();
        let t = g.unary(UnaryOp::Abs, p).unwrap();
        let mut out = vec![t];
        for axes in [
            vec![0],
            vec![1],
            vec![2],
            vec![0, 2],
            vec![1, 2],
            vec![0, 1, 2],
        ] {
            out.push(g.reduce(ReduceOp::Sum, x[0], axes.clone()).unwrap());
            out.push(g.reduce(ReduceOp::Max, t, axes).unwrap());
        }
        out
    });
}

#[test]
fn slices_with_steps() {
    run(&[(DType::F32, &[11]), (DType::F64, &[7, 9])], |g, x| {
        let a = g.slice(x[0], vec![sl(2, 9, 3)]).unwrap();
        let b = g.slice(x[1], vec![sl(1, 6, 2), sl(0, 9, 4)]).unwrap();
        let c = g.slice(x[1], vec![sl(6, 7, 5), sl(8, 9, 1)]).unwrap();
        let d = g.slice(b, vec![sl(1, 3, 2), sl(0, 3, 2)]).unwrap();
        vec![a, b, c, d]
    });
}

#[test]
fn pads_of_every_kind() {
    run(
        &[
            (DType::F32, &[3, 4]),
            (DType::I64, &[5]),
            (DType::Bool, &[2, 3]),
        ],
        |g, x| {
            let a = g.pad(x[0], vec![1, 0], vec![2, 3], 1.5).unwrap();
            let b = g.pad(a, vec![0, 2], vec![1, 0], -1.0).unwrap(); // pad of a pad
            let c = g.slice(b, vec![sl(1, 4, 1), sl(2, 6, 1)]).unwrap(); // the interior again
            let d = g.pad(x[1], vec![3], vec![4], 7.0).unwrap();
            let e = g.pad(x[2], vec![1, 1], vec![1, 1], 1.0).unwrap();
            let f = g.reduce(ReduceOp::Sum, b, vec![1]).unwrap();
            let h = g.slice(a, vec![sl(0, 6, 5), sl(0, 7, 3)]).unwrap(); // only padding
            vec![a, b, c, d, e, f, h]
        },
    );
}

#[test]
fn concats_including_empty_parts() {
    run(
        &[
            (DType::F32, &[2, 3]),
            (DType::F32, &[0, 3]),
            (DType::F32, &[1, 3]),
            (DType::Bool, &[2, 1]),
        ],
        |g, x| {
            let a = g.concat(&[x[0], x[1], x[2], x[0]], 0).unwrap();
            let b = g.concat(&[x[1], x[1]], 0).unwrap();
            let t = g.transpose_last(a).unwrap();
            let c = g.concat(&[x[3], x[3], x[3]], 1).unwrap();
            let s = g.reduce(ReduceOp::Sum, b, vec![0]).unwrap(); // sum over an empty axis
            let m = g.reduce(ReduceOp::Max, b, vec![0]).unwrap(); // max of nothing: -inf
            vec![a, b, t, c, s, m]
        },
    );
}

#[test]
fn vector_tails_of_every_length() {
    for n in 1..=11 {
        run(
            &[(DType::F32, &[3, n]), (DType::F64, &[n, 2, n])],
            |g, x| {
                let a = g.unary(UnaryOp::Tanh, x[0]).unwrap();
                let s = g.reduce(ReduceOp::Sum, a, vec![1]).unwrap();
                let m = g.reduce(ReduceOp::Max, x[1], vec![0]).unwrap();
                let e = g.unary(UnaryOp::Exp, x[1]).unwrap();
                let z = g.full_like(0.0, x[0]).unwrap();
                let c = g.compare(CmpOp::Gt, x[0], z).unwrap();
                let w = g.select(c, a, z).unwrap();
                let b = g.cast(c, DType::F32).unwrap();
                vec![a, s, m, e, w, b, c]
            },
        );
    }
}

#[test]
fn integers_and_bools_through_movement() {
    run(&[(DType::I64, &[4, 3]), (DType::Bool, &[4, 3])], |g, x| {
        let p = g.transpose_last(x[0]).unwrap();
        let r = g.reshape(p, vec![2, 6]).unwrap();
        let n = g.unary(UnaryOp::Abs, r).unwrap();
        let s = g.reduce(ReduceOp::Sum, n, vec![1]).unwrap();
        let m = g.reduce(ReduceOp::Max, x[0], vec![0]).unwrap();
        let q = g.binary(BinaryOp::Mul, x[0], x[0]).unwrap();
        let b = g.transpose_last(x[1]).unwrap();
        let f = g.cast(x[1], DType::I64).unwrap();
        let w = g.select(x[1], x[0], q).unwrap();
        let c = g.compare(CmpOp::Lt, x[1], x[1]).unwrap();
        vec![p, r, n, s, m, q, b, f, w, c]
    });
}

#[test]
fn strided_unslice_like_max_pool_backward() {
    // The gradient of a strided slice: reshape, pad, reshape, slice, pad.
    run(&[(DType::F32, &[2, 3, 4, 3])], |g, x| {
        let r = g.reshape(x[0], vec![2, 3, 4, 1, 3, 1]).unwrap();
        let p = g.pad(r, vec![0; 6], vec![0, 0, 0, 1, 0, 2], 0.0).unwrap();
        let r2 = g.reshape(p, vec![2, 3, 8, 9]).unwrap();
        let s = g
            .slice(r2, vec![sl(0, 2, 1), sl(0, 3, 1), sl(0, 7, 1), sl(0, 7, 1)])
            .unwrap();
        let q = g.pad(s, vec![0, 0, 1, 0], vec![0, 0, 1, 2], 0.0).unwrap();
        vec![q]
    });
}

#[test]
fn broadcast_of_computed_values() {
    run(&[(DType::F32, &[4, 1]), (DType::F32, &[4, 6])], |g, x| {
        let e = g.unary(UnaryOp::Exp, x[0]).unwrap();
        let b = g.expand(e, vec![4, 6]).unwrap();
        let y = g.mul(b, x[1]).unwrap();
        let s = g.reduce(ReduceOp::Sum, y, vec![1]).unwrap();
        let d = g.div(e, s).unwrap();
        vec![y, d]
    });
}

/// The gradient of a sum of strided slices (max pooling's backward pass) as autodiff writes
/// it, one `pad(slice(reshape(pad(reshape(g)))))` per slice: the lowering splits the loops
/// into residue classes of the step. `dims` is the input's shape, `step` and `window` per
/// axis (1 and 1 for an axis not pooled), `pad` zeros around the input first; the slices run
/// to the end of each axis, so steps need not divide the sizes.
fn strided_gradient(dtype: DType, dims: &[usize], step: &[usize], window: &[usize], pad: usize) {
    let rank = dims.len();
    let padded: Vec<usize> = (0..rank)
        .map(|k| dims[k] + if window[k] > 1 { 2 * pad } else { 0 })
        .collect();
    // Every offset in the window, and the shape of its slice.
    let mut offsets: Vec<Vec<usize>> = vec![Vec::new()];
    for &wk in window {
        offsets = offsets
            .into_iter()
            .flat_map(|o| {
                (0..wk).map(move |w| {
                    let mut o = o.clone();
                    o.push(w);
                    o
                })
            })
            .collect();
    }
    let shapes: Vec<Vec<usize>> = offsets
        .iter()
        .map(|o| {
            (0..rank)
                .map(|k| (padded[k] - o[k]).div_ceil(step[k]))
                .collect()
        })
        .collect();
    let mut types: Vec<(DType, &[usize])> = vec![(dtype, dims)];
    types.extend(shapes.iter().map(|s| (dtype, s.as_slice())));
    run(&types, |g, x| {
        let lo: Vec<usize> = (0..rank)
            .map(|k| if window[k] > 1 { pad } else { 0 })
            .collect();
        let src = if pad > 0 {
            g.pad(x[0], lo.clone(), lo, 0.0).unwrap()
        } else {
            x[0]
        };
        let mut seeds = Vec::new();
        for (t, o) in offsets.iter().enumerate() {
            let axes = (0..rank).map(|k| sl(o[k], padded[k], step[k])).collect();
            let s = g.slice(src, axes).unwrap();
            seeds.push((s, x[1 + t]));
        }
        let dx = kiln_ir::autodiff::grad(g, &seeds, &[x[0]]).unwrap()[0].unwrap();
        // Also under a mask, as a ReLU before the pool makes it.
        let zero = g.full_like(0.0, x[0]).unwrap();
        let m = g.compare(CmpOp::Gt, x[0], zero).unwrap();
        let masked = g.select(m, dx, zero).unwrap();
        vec![dx, masked]
    });
}

#[test]
fn strided_slice_gradients_split_into_residue_classes() {
    // Max pool 2x2 stride 2 on even and odd sizes.
    strided_gradient(DType::F32, &[2, 3, 8, 8], &[1, 1, 2, 2], &[1, 1, 2, 2], 0);
    strided_gradient(DType::F32, &[2, 3, 7, 9], &[1, 1, 2, 2], &[1, 1, 2, 2], 0);
    // Steps of 3 that do not divide, windows smaller and larger than the step.
    strided_gradient(DType::F64, &[1, 2, 10, 8], &[1, 1, 3, 3], &[1, 1, 3, 2], 0);
    strided_gradient(DType::F32, &[2, 11, 5], &[1, 3, 2], &[1, 4, 3], 0);
    // With padding (a pool with padding 1), and in 3-D.
    strided_gradient(DType::F32, &[1, 2, 7, 6], &[1, 1, 2, 2], &[1, 1, 3, 3], 1);
    strided_gradient(
        DType::F32,
        &[1, 2, 5, 6, 7],
        &[1, 1, 2, 2, 2],
        &[1, 1, 2, 2, 2],
        0,
    );
    // A strided leading axis (kept whole for the parallel loop) and steps of 4.
    strided_gradient(DType::F32, &[9, 13], &[2, 4], &[2, 4], 0);
    strided_gradient(DType::F64, &[3, 17, 5], &[1, 4, 1], &[1, 2, 1], 0);
}

/// Reductions with few outputs over many elements are split into two parallel stages
/// (`kiln_codegen::split`): full sums and maxima, one over an axis without a divisor in
/// 8..=64 (kept whole), and a bias-gradient-like sum over all axes but one.
#[test]
fn large_reductions_split_in_two_stages() {
    run(
        &[(DType::F32, &[3, 1 << 16]), (DType::F32, &[67, 1031])],
        |g, x| {
            let e = g.unary(UnaryOp::Tanh, x[0]).unwrap();
            let full = g.reduce(ReduceOp::Sum, e, vec![0, 1]).unwrap();
            let max = g.reduce(ReduceOp::Max, x[0], vec![0, 1]).unwrap();
            let rows = g.reduce(ReduceOp::Sum, x[0], vec![1]).unwrap();
            let prime = g.reduce(ReduceOp::Sum, x[1], vec![0, 1]).unwrap();
            vec![full, max, rows, prime]
        },
    );
}
