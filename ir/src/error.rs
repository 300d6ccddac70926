//! Errors of the IR crate, as values.

use crate::graph::Loc;
use std::fmt;

/// Where a node came from, for error messages: `%7 = add(%3: f32[2,3], %5: f32[3,2])`
/// created at `src/main.rs:12:9`.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeContext {
    /// Index of the node in its graph.
    pub node: usize,
    /// Mnemonic of the node's op.
    pub op: String,
    /// Operands as `%id: type`.
    pub operands: Vec<String>,
    /// The user's source line that created the node, if known.
    pub loc: Option<Loc>,
}

impl fmt::Display for NodeContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "%{} = {}({})",
            self.node,
            self.op,
            self.operands.join(", ")
        )?;
        match &self.loc {
            Some(loc) => write!(f, " created at {loc}"),
            None => write!(f, " (no source location)"),
        }
    }
}

/// Everything that can go wrong inside the IR crate.
#[derive(Debug, thiserror::Error)]
pub enum IrError {
    /// An op applied to operands it does not accept, found when the node was created.
    #[error("{op}: {msg}; operands: {operands}{}", loc_suffix(.loc))]
    Shape {
        op: String,
        operands: String,
        msg: String,
        loc: Option<Loc>,
    },
    /// The verifier found a malformed node.
    #[error("verifier: {msg}\n  at {ctx}")]
    Verify { ctx: Box<NodeContext>, msg: String },
    /// A graph-level inconsistency (cycle, dangling name) not tied to one node's operands.
    #[error("verifier: {0}")]
    Graph(String),
    /// Malformed IR text.
    #[error("IR text, line {line}, column {col}: {msg}")]
    Parse {
        line: usize,
        col: usize,
        msg: String,
    },
    /// The interpreter was asked for something it cannot do (unbound input, bad binding).
    #[error("interpreter: {0}")]
    Eval(String),
    /// Autodiff was asked for a gradient it cannot form.
    #[error("autodiff: {0}")]
    Grad(String),
}

fn loc_suffix(loc: &Option<Loc>) -> String {
    match loc {
        Some(l) => format!("; at {l}"),
        None => String::new(),
    }
}

pub type Result<T, E = IrError> = std::result::Result<T, E>;
