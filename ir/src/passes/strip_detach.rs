//! Removes `detach` nodes: in value a `detach` is the identity; it only tells autodiff not to
//! differentiate through its operand.
//!
//! Run it only on a graph that will not be differentiated again, i.e. after
//! [`crate::autodiff::grad`], as backends do ([`super::PassOptions::backend`]). Removing a
//! `detach` before autodiff would let gradients flow where the user stopped them (`no_grad`,
//! `.detach()`), so it is not in the default pipeline.

use super::{replace, Tags};
use crate::error::Result;
use crate::graph::Graph;
use crate::op::Op;

/// Replaces every `detach(x)` by `x`; returns how many.
pub fn strip_detach(graph: &mut Graph) -> Result<usize> {
    let mut tags = Tags::new(graph);
    let mut n = 0;
    for id in graph.node_ids() {
        if graph.contains(id) && matches!(graph.node(id).op, Op::Detach) {
            let x = graph.operands(id)[0];
            replace(graph, &mut tags, id, x);
            n += 1;
        }
    }
    Ok(n)
}
