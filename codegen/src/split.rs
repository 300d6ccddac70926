//! Splitting large reductions with few outputs into two stages, so that they run in parallel.
//!
//! A kernel is parallel over its output elements (each thread owns some of them). A
//! reduction with a handful of outputs over millions of inputs (`x.sum()`, a loss, a bias
//! gradient) would run on one thread. [`split_reductions`] rewrites
//!
//! ```text
//! r = reduce_op(x: [.., e, ..], axes A ∋ a)        with e = P·q
//! ```
//!
//! as `reduce_op(reduce_op(reshape(x, [.., P, q, ..]), A with a→a+1 (and later axes shifted)), [a])`
//! reshaped back: the first stage has `P` times as many outputs (one per chunk, computed in
//! parallel), the second adds the `P` partial results. `a` is the outermost reduced axis that
//! has a divisor `P` in `8..=64`, so each chunk stays a contiguous run of the input.
//!
//! This reassociates a float sum: the result is a (usually more accurate) sum in another
//! order, not the same bits as a sequential loop. That is why it is a backend rewrite and not
//! one of kiln-ir's exact passes; the reference interpreter, which accumulates in f64, remains
//! the oracle (`codegen/tests/differential.rs`). `reduce_max` is exact either way.

use kiln_ir::{Graph, Op, Result};

/// A reduction with at most this many outputs is a candidate...
const MAX_OUTPUTS: usize = 16;
/// ...when it reduces at least this many elements into each output.
const MIN_REDUCED: usize = 1 << 16;

/// The chunk count for an axis of extent `e`: the largest divisor in `8..=64`.
fn chunks(e: usize) -> Option<usize> {
    (8..=64usize)
        .rev()
        .find(|&p| e.is_multiple_of(p) && e / p >= 2)
}

/// Rewrites every large, few-output reduction of `g` into two stages; returns how many.
pub fn split_reductions(g: &mut Graph) -> Result<usize> {
    let mut count = 0;
    for id in g.topo_order()? {
        let (op, axes) = match &g.node(id).op {
            Op::Reduce { op, axes } => (*op, axes.clone()),
            _ => continue,
        };
        let x = g.operands(id)[0];
        let shape = g.shape(x).to_vec();
        let reduced: usize = axes.iter().map(|&a| shape[a]).product();
        let outputs = g.ty(id).numel();
        if outputs > MAX_OUTPUTS || reduced < MIN_REDUCED {
            continue;
        }
        let mut sorted = axes.clone();
        sorted.sort_unstable();
        let Some((a, p)) = sorted
            .iter()
            .find_map(|&a| chunks(shape[a]).map(|p| (a, p)))
        else {
            continue;
        };
        let loc = g.node(id).loc.clone();
        let out_shape = g.shape(id).to_vec();
        let mut split_shape = shape[..a].to_vec();
        split_shape.extend([p, shape[a] / p]);
        split_shape.extend_from_slice(&shape[a + 1..]);
        let first_axes: Vec<usize> = sorted
            .iter()
            .map(|&b| if b < a { b } else { b + 1 })
            .collect();
        let xs = g.push_at(Op::Reshape(split_shape), &[x], loc.clone())?;
        let partial = g.push_at(
            Op::Reduce {
                op,
                axes: first_axes,
            },
            &[xs],
            loc.clone(),
        )?;
        let total = g.push_at(Op::Reduce { op, axes: vec![a] }, &[partial], loc.clone())?;
        let back = g.push_at(Op::Reshape(out_shape), &[total], loc)?;
        g.replace_all_uses(id, back);
        g.remove_node(id);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::{DType, ReduceOp, TensorType};

    #[test]
    fn chunk_counts() {
        assert_eq!(chunks(1 << 22), Some(64));
        assert_eq!(chunks(30), Some(15));
        assert_eq!(chunks(7), None);
        assert_eq!(chunks(16), Some(8));
    }

    #[test]
    fn a_full_sum_becomes_two_stages_and_small_ones_stay() {
        let mut g = Graph::new();
        let x = g
            .input("x", TensorType::new(DType::F32, vec![4, 1 << 16]))
            .unwrap();
        let s = g.reduce(ReduceOp::Sum, x, vec![0, 1]).unwrap();
        let y = g
            .input("y", TensorType::new(DType::F32, vec![64, 64]))
            .unwrap();
        let t = g.reduce(ReduceOp::Max, y, vec![1]).unwrap();
        g.set_output("s", s);
        g.set_output("t", t);
        assert_eq!(split_reductions(&mut g).unwrap(), 1);
        let s2 = g.outputs["s"];
        assert_eq!(g.shape(s2), &[1, 1]);
        assert!(matches!(g.node(s2).op, Op::Reshape(_)));
        assert_eq!(g.outputs["t"], t);
        kiln_ir::verify(&g).unwrap();
    }
}
