//! Dead-code elimination: removes the nodes no output depends on.
//!
//! `input` and `param` nodes always stay, used or not: callers bind values to them by name
//! (or by id), and a binding for an input the graph no longer declared would be an error at
//! run time, or worse, silently change which arguments a compiled program takes. Everything
//! else that no output reaches goes, constants and dead gradient work included. A graph
//! without outputs is thus reduced to its inputs and params.
//!
//! Gradient tags that named a removed node are cleared ([`Graph::remove_nodes`]).

use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::op::Op;
use std::collections::HashSet;

/// Removes every node that is not an input, a param or needed by an output; returns how many.
pub fn dce(graph: &mut Graph) -> Result<usize> {
    let roots: Vec<_> = graph.outputs.values().copied().collect();
    let live: HashSet<NodeId> = graph.reachable_topo(&roots).into_iter().collect();
    let dead: Vec<_> = graph
        .node_ids()
        .into_iter()
        .filter(|&id| {
            !live.contains(&id) && !matches!(graph.node(id).op, Op::Input { .. } | Op::Param { .. })
        })
        .collect();
    graph.remove_nodes(&dead);
    Ok(dead.len())
}
