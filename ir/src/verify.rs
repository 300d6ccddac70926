//! The verifier: checks a graph's invariants and reports the first violation as a located
//! error (node, op, operand types, the user's source line).
//!
//! Run after every transformation (autodiff, passes, parsing). It checks:
//! - acyclicity;
//! - operand count and positions (slots `0..n`, no gaps or duplicates);
//! - each node's stored type equals the type inferred from its operands;
//! - `inputs`/`params` name exactly the `input`/`param` nodes, under their own names;
//! - outputs and gradient tags refer to nodes of the graph.

use crate::error::{IrError, Result};
use crate::graph::{Graph, NodeId};
use crate::infer::infer;
use crate::op::Op;
use petgraph::Direction;

/// Checks `graph`; `Ok(())` or the first problem found, located.
pub fn verify(graph: &Graph) -> Result<()> {
    let order = graph.topo_order()?;
    for id in order {
        verify_node(graph, id)?;
    }
    for (kind, map, want_input) in [
        ("input", &graph.inputs, true),
        ("param", &graph.params, false),
    ] {
        for (name, &id) in map {
            if !graph.contains(id) {
                return Err(IrError::Graph(format!(
                    "{kind} `{name}` names missing node %{}",
                    id.index()
                )));
            }
            let ok = match (&graph.node(id).op, want_input) {
                (Op::Input { name: n, .. }, true) | (Op::Param { name: n, .. }, false) => n == name,
                _ => false,
            };
            if !ok {
                return Err(located(
                    graph,
                    id,
                    format!("{kind} `{name}` names a node that is not {kind} `{name}`"),
                ));
            }
        }
    }
    for (name, &id) in &graph.outputs {
        if !graph.contains(id) {
            return Err(IrError::Graph(format!(
                "output `{name}` names missing node %{}",
                id.index()
            )));
        }
    }
    Ok(())
}

fn located(graph: &Graph, id: NodeId, msg: String) -> IrError {
    IrError::Verify {
        ctx: Box::new(graph.context(id)),
        msg,
    }
}

fn verify_node(graph: &Graph, id: NodeId) -> Result<()> {
    let node = graph.node(id);
    let mut slots: Vec<u32> = graph
        .petgraph()
        .edges_directed(id, Direction::Incoming)
        .map(|e| *e.weight())
        .collect();
    slots.sort_unstable();
    if slots.iter().enumerate().any(|(i, &s)| s as usize != i) {
        return Err(located(
            graph,
            id,
            format!("operand slots {slots:?} are not 0..{}", slots.len()),
        ));
    }
    let operands = graph.operands(id);
    let tys: Vec<_> = operands.iter().map(|&o| graph.ty(o)).collect();
    let ty = infer(&node.op, &tys).map_err(|m| located(graph, id, m))?;
    if ty != node.ty {
        return Err(located(
            graph,
            id,
            format!(
                "node is typed {} but its op and operands give {}",
                node.ty, ty
            ),
        ));
    }
    match &node.op {
        Op::Input { name, .. } if graph.inputs.get(name) != Some(&id) => {
            return Err(located(
                graph,
                id,
                format!("input `{name}` is not registered under its name"),
            ));
        }
        Op::Param { name, .. } if graph.params.get(name) != Some(&id) => {
            return Err(located(
                graph,
                id,
                format!("param `{name}` is not registered under its name"),
            ));
        }
        _ => {}
    }
    if let Some(f) = node.grad_of {
        if !graph.contains(f) {
            return Err(located(
                graph,
                id,
                format!("gradient tag names missing node %{}", f.index()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Loc, Node};
    use crate::op::BinaryOp;
    use crate::{DType, TensorType};
    use std::borrow::Cow;

    #[test]
    fn well_formed_graph_passes() {
        let mut g = Graph::new();
        let a = g.input("a", TensorType::new(DType::F32, [2, 3])).unwrap();
        let b = g.param("b", TensorType::new(DType::F32, [2, 3])).unwrap();
        let c = g.add(a, b).unwrap();
        g.set_output("c", c);
        verify(&g).unwrap();
    }

    #[test]
    fn mismatched_shapes_give_a_located_error() {
        let mut g = Graph::new();
        let a = g.input("a", TensorType::new(DType::F32, [2, 3])).unwrap();
        let b = g.input("b", TensorType::new(DType::F32, [3, 2])).unwrap();
        let loc = Loc {
            file: Cow::Borrowed("src/model.rs"),
            line: 42,
            col: 7,
        };
        // Built unchecked, as a buggy pass would.
        let c = g.push_node(
            Node {
                op: Op::Binary(BinaryOp::Add),
                ty: TensorType::new(DType::F32, [2, 3]),
                loc: Some(loc),
                grad_of: None,
            },
            &[a, b],
        );
        g.set_output("c", c);
        let err = verify(&g).unwrap_err().to_string();
        assert!(
            err.contains("%2 = add(%0: f32[2,3], %1: f32[3,2])"),
            "{err}"
        );
        assert!(err.contains("src/model.rs:42:7"), "{err}");
        assert!(err.contains("operands must have one type"), "{err}");
    }

    #[test]
    fn wrong_stored_type_is_caught() {
        let mut g = Graph::new();
        let a = g.input("a", TensorType::new(DType::F32, [4])).unwrap();
        let e = g.unary(crate::op::UnaryOp::Exp, a).unwrap();
        g.node_mut(e).ty = TensorType::new(DType::F64, [4]);
        let err = verify(&g).unwrap_err().to_string();
        assert!(
            err.contains("typed f64[4] but its op and operands give f32[4]"),
            "{err}"
        );
    }

    #[test]
    fn builder_reports_shape_errors_at_creation() {
        let mut g = Graph::new();
        let a = g.input("a", TensorType::new(DType::F32, [2, 3])).unwrap();
        let b = g.input("b", TensorType::new(DType::F32, [4, 5])).unwrap();
        g.set_origin(
            Some(Loc {
                file: Cow::Borrowed("train.rs"),
                line: 9,
                col: 1,
            }),
            None,
        );
        let err = g.matmul(a, b).unwrap_err().to_string();
        assert!(
            err.starts_with("matmul: cannot multiply [2,3] by [4,5]"),
            "{err}"
        );
        assert!(err.contains("train.rs:9:1"), "{err}");
    }
}
