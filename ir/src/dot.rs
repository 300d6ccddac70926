//! Graphviz DOT export of a graph, for looking at it (`dot -Tsvg graph.dot > graph.svg`).
//!
//! Nodes are numbered as in the text form ([`crate::text::print_order`]) and labelled
//! `%n op` over their type; the tooltip holds the node's full text line. Inputs are blue
//! inverted houses, parameters yellow boxes with a bold border, constants (`const`, `full`)
//! grey, gradient nodes (those with a `grad(...)` tag) red, and every output is a green oval
//! named after it. Edges run from operand to user and are labelled with the operand's
//! position when the user has more than one operand.

use crate::graph::{Graph, NodeId};
use crate::op::Op;
use crate::text::{print_order, write_node};
use std::collections::HashMap;
use std::fmt::Write;

/// Escapes text for a double-quoted DOT string (newlines become DOT's `\n` line breaks).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

fn num_of(num: &HashMap<NodeId, usize>, graph: &Graph, id: NodeId) -> String {
    match num.get(&id) {
        Some(i) if graph.contains(id) => format!("%{i}"),
        _ => format!("%!{}", id.index()),
    }
}

/// The graph in Graphviz DOT (see the module documentation for the visual conventions).
pub fn to_dot(graph: &Graph) -> String {
    let order = print_order(graph);
    let num: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut out = String::from("digraph kiln {\n");
    out.push_str("  rankdir=TB;\n");
    out.push_str(
        "  node [shape=box, style=\"rounded,filled\", fillcolor=white, fontname=\"monospace\", fontsize=10];\n",
    );
    out.push_str("  edge [fontname=\"monospace\", fontsize=9, color=\"#555555\"];\n");
    for (i, &id) in order.iter().enumerate() {
        let node = graph.node(id);
        let mut head = format!("%{i} {}", node.op.name());
        if let Op::Input { name, .. } | Op::Param { name, .. } = &node.op {
            let _ = write!(head, " {name:?}");
        }
        let mut label = vec![esc(&head), esc(&node.ty.to_string())];
        if let Some(f) = node.grad_of {
            label.push(esc(&format!("grad of {}", num_of(&num, graph, f))));
        }
        let mut tooltip = String::new();
        write_node(&mut tooltip, graph, id, &num);
        let (shape, style, mut fill) = match &node.op {
            Op::Input { .. } => (Some("invhouse"), None, Some("#cfe2f3")),
            Op::Param { .. } => (None, Some("filled,bold"), Some("#fff2cc")),
            Op::Const(_) | Op::Full { .. } => (None, None, Some("#eeeeee")),
            _ => (None, None, None),
        };
        let mut attrs = Vec::new();
        if node.grad_of.is_some() {
            fill = Some("#f4cccc");
            attrs.push("color=\"#cc0000\"".to_string());
        }
        if let Some(s) = shape {
            attrs.push(format!("shape={s}"));
        }
        if let Some(s) = style {
            attrs.push(format!("style=\"{s}\""));
        }
        if let Some(f) = fill {
            attrs.push(format!("fillcolor=\"{f}\""));
        }
        let attrs = attrs.join(", ");
        let _ = writeln!(
            out,
            "  n{i} [label=\"{}\", tooltip=\"{}\"{}{}];",
            label.join("\\n"),
            esc(&tooltip),
            if attrs.is_empty() { "" } else { ", " },
            attrs
        );
    }
    for (i, &id) in order.iter().enumerate() {
        let operands = graph.operands(id);
        for (k, o) in operands.iter().enumerate() {
            let Some(src) = num.get(o) else { continue };
            if operands.len() > 1 {
                let _ = writeln!(out, "  n{src} -> n{i} [label=\"{k}\"];");
            } else {
                let _ = writeln!(out, "  n{src} -> n{i};");
            }
        }
    }
    for (k, (name, id)) in graph.outputs.iter().enumerate() {
        let _ = writeln!(
            out,
            "  out{k} [label=\"{}\", shape=oval, fillcolor=\"#d9ead3\", style=\"filled,bold\"];",
            esc(&format!("output {name:?}"))
        );
        if let (Some(src), true) = (num.get(id), graph.contains(*id)) {
            let _ = writeln!(out, "  n{src} -> out{k} [style=bold];");
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, TensorType};

    #[test]
    fn dot_marks_kinds_and_operand_positions() {
        let mut g = Graph::new();
        let t = TensorType::new(DType::F32, [2]);
        let x = g.input("x \"q\"", t.clone()).unwrap();
        let w = g.param("w", t.clone()).unwrap();
        let y = g.sub(x, w).unwrap();
        let e = g.unary(crate::op::UnaryOp::Exp, y).unwrap();
        g.set_origin(None, Some(y));
        let d = g.full_like(1.0, y).unwrap();
        g.set_output("e", e);
        g.set_output("d", d);
        let s = to_dot(&g);
        assert!(
            s.starts_with("digraph kiln {\n") && s.ends_with("}\n"),
            "{s}"
        );
        assert!(
            s.contains(r#"n0 [label="%0 input \"x \\\"q\\\"\"\nf32[2]""#),
            "{s}"
        );
        assert!(s.contains("shape=invhouse"), "{s}");
        assert!(s.contains("n0 -> n2 [label=\"0\"];"), "{s}");
        assert!(s.contains("n1 -> n2 [label=\"1\"];"), "{s}");
        assert!(s.contains("n2 -> n3;"), "{s}");
        assert!(s.contains("grad of %2"), "{s}");
        assert!(s.contains("#f4cccc"), "{s}");
        let n4 = s.lines().find(|l| l.starts_with("  n4 [")).unwrap();
        assert_eq!(n4.matches("fillcolor").count(), 1, "{n4}");
        assert!(n4.contains("fillcolor=\"#f4cccc\""), "{n4}");
        assert!(s.contains("n3 -> out0 [style=bold];"), "{s}");
        assert!(s.contains("n4 -> out1 [style=bold];"), "{s}");
    }
}
