//! The text form of the IR: a printer and a parser that round-trip.
//!
//! ```text
//! ; a comment runs from `;` to the end of the line
//! graph {
//!   %0: f32[2,3] = input "x"
//!   %1: f32[2,3] = param "w"
//!   %2: f32[2,3] = mul %0, %1 @ "src/model.rs":12:9
//!   %3: f32[2,1] = reduce_sum %2 axes=[1]
//!   %4: f32[2,3] = full 1.0 grad(%2)
//!   output "y" = %3
//! }
//! ```
//!
//! One statement a line: a node `%name: type = op [positional] [operands] [attr=value ...]
//! [grad(%n)] [@ "file":line:col]`, an `output "name" = %value`, or the braces around them.
//! The printer numbers nodes `%0, %1, ...` in [`print_order`]: the registered inputs in their
//! map order, then the registered parameters in theirs, then every other node in
//! [`Graph::topo_order`] order. Every attribute is printed, floats in the shortest form that
//! reads back bit-exactly (`nan`, `inf`, `-inf`, and `nan(0x...)` for non-canonical NaNs).
//!
//! The parser checks each node's declared type against [`infer`] and runs [`verify`] on the
//! result; every error is an [`IrError::Parse`] with a line and column. The full grammar and
//! every op's attributes are described in `docs/ir.md`.

use crate::error::{IrError, Result};
use crate::graph::{Graph, Loc, Node, NodeId};
use crate::infer::infer;
use crate::literal::{Data, Literal};
use crate::op::{BinaryOp, CmpOp, ConvParams, Op, ReduceOp, SliceAxis, UnaryOp};
use crate::verify::verify;
use crate::{DType, TensorType};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write};
use std::sync::Arc;

/// The largest integer accepted for a size, axis or attribute in the text (`2^31 - 1`), so
/// that shape arithmetic on parsed graphs cannot overflow.
pub const MAX_INT: usize = (1 << 31) - 1;

/// Every op mnemonic the text format knows, in the order of [`Op`]'s variants (keep in step
/// with `template`, which maps each back to its op).
pub const OP_NAMES: [&str; 40] = [
    "input",
    "param",
    "const",
    "full",
    "neg",
    "exp",
    "log",
    "sqrt",
    "recip",
    "abs",
    "tanh",
    "sigmoid",
    "add",
    "sub",
    "mul",
    "div",
    "max",
    "min",
    "pow",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "where",
    "cast",
    "detach",
    "reduce_sum",
    "reduce_max",
    "reshape",
    "permute",
    "expand",
    "slice",
    "pad",
    "concat",
    "matmul",
    "conv",
    "conv_transpose",
    "conv_weight",
];

// ----- printer -------------------------------------------------------------------------------

/// The order in which [`print`] numbers the nodes: `inputs` (map order), then `params` (map
/// order), then the remaining nodes in [`Graph::topo_order`] order (index order if the graph
/// has a cycle). Position `i` in the result is the node printed as `%i`.
pub fn print_order(graph: &Graph) -> Vec<NodeId> {
    let mut order = Vec::with_capacity(graph.len());
    let mut seen = HashSet::new();
    for (map, want_input) in [(&graph.inputs, true), (&graph.params, false)] {
        for (name, &id) in map {
            if !graph.contains(id) || seen.contains(&id) {
                continue;
            }
            let registered = match (&graph.node(id).op, want_input) {
                (Op::Input { name: n, .. }, true) | (Op::Param { name: n, .. }, false) => n == name,
                _ => false,
            };
            if registered {
                seen.insert(id);
                order.push(id);
            }
        }
    }
    let rest = graph.topo_order().unwrap_or_else(|_| graph.node_ids());
    for id in rest {
        if seen.insert(id) {
            order.push(id);
        }
    }
    order
}

fn numbering(order: &[NodeId]) -> HashMap<NodeId, usize> {
    order.iter().enumerate().map(|(i, &id)| (id, i)).collect()
}

/// Prints `graph` in the text form (see the module documentation). Never fails: a malformed
/// graph prints too, with dangling references as `%!<index>` (which do not parse).
pub fn print(graph: &Graph) -> String {
    let order = print_order(graph);
    let num = numbering(&order);
    let mut out = String::new();
    if graph.topo_order().is_err() {
        out.push_str("; the graph has a cycle: this text does not parse\n");
    }
    out.push_str("graph {\n");
    for &id in &order {
        out.push_str("  ");
        write_node(&mut out, graph, id, &num);
        out.push('\n');
    }
    for (name, &id) in &graph.outputs {
        out.push_str("  output ");
        write_str_lit(&mut out, name);
        out.push_str(" = ");
        write_ref(&mut out, graph, id, &num);
        out.push('\n');
    }
    out.push_str("}\n");
    out
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&print(self))
    }
}

fn write_ref(out: &mut String, graph: &Graph, id: NodeId, num: &HashMap<NodeId, usize>) {
    match num.get(&id) {
        Some(i) if graph.contains(id) => {
            let _ = write!(out, "%{i}");
        }
        _ => {
            let _ = write!(out, "%!{}", id.index());
        }
    }
}

/// One node's line without indentation: `%i: type = op ... [grad(%n)] [@ "file":l:c]`.
pub(crate) fn write_node(
    out: &mut String,
    graph: &Graph,
    id: NodeId,
    num: &HashMap<NodeId, usize>,
) {
    let node = graph.node(id);
    write_ref(out, graph, id, num);
    let _ = write!(out, ": {} = ", node.ty);
    write_op(out, graph, id, num);
    if let Some(f) = node.grad_of {
        out.push_str(" grad(");
        write_ref(out, graph, f, num);
        out.push(')');
    }
    if let Some(loc) = &node.loc {
        out.push_str(" @ ");
        write_str_lit(out, &loc.file);
        let _ = write!(out, ":{}:{}", loc.line, loc.col);
    }
}

/// The op part of a node's line: mnemonic, positional argument, operands, attributes.
pub(crate) fn write_op(out: &mut String, graph: &Graph, id: NodeId, num: &HashMap<NodeId, usize>) {
    let node = graph.node(id);
    out.push_str(node.op.name());
    // The op's own type, when it differs from the node's (only in malformed graphs).
    let mut own_ty = None;
    match &node.op {
        Op::Input { name, ty } | Op::Param { name, ty } => {
            out.push(' ');
            write_str_lit(out, name);
            own_ty = Some(ty.clone());
        }
        Op::Const(lit) => {
            out.push(' ');
            write_data(out, &lit.data);
            own_ty = Some(lit.ty());
        }
        Op::Full { value, ty } => {
            out.push(' ');
            out.push_str(&fmt_f64(*value));
            own_ty = Some(ty.clone());
        }
        _ => {}
    }
    for (k, &o) in graph.operands(id).iter().enumerate() {
        out.push_str(if k == 0 { " " } else { ", " });
        write_ref(out, graph, o, num);
    }
    match &node.op {
        Op::Cast(d) => {
            let _ = write!(out, " dtype={d}");
        }
        Op::Reduce { axes, .. } => write_ints(out, "axes", axes),
        Op::Reshape(s) | Op::Expand(s) => write_ints(out, "shape", s),
        Op::Permute(p) => write_ints(out, "perm", p),
        Op::Slice(ranges) => {
            out.push_str(" ranges=[");
            for (i, r) in ranges.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:{}:{}", r.start, r.end, r.step);
            }
            out.push(']');
        }
        Op::Pad { lo, hi, value } => {
            write_ints(out, "lo", lo);
            write_ints(out, "hi", hi);
            let _ = write!(out, " value={}", fmt_f64(*value));
        }
        Op::Concat(axis) => {
            let _ = write!(out, " axis={axis}");
        }
        Op::Conv(p) | Op::ConvTranspose(p) => write_conv(out, p),
        Op::ConvWeight { params, kernel } => {
            write_conv(out, params);
            write_ints(out, "kernel", kernel);
        }
        // No attributes (leaves print theirs above). Listed so that a new op must be added.
        Op::Input { .. }
        | Op::Param { .. }
        | Op::Const(_)
        | Op::Full { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Where
        | Op::Detach
        | Op::MatMul => {}
    }
    if let Some(ty) = own_ty {
        if ty != node.ty {
            let _ = write!(out, " ty={ty}");
        }
    }
}

fn write_ints(out: &mut String, name: &str, v: &[usize]) {
    let _ = write!(out, " {name}=[");
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{x}");
    }
    out.push(']');
}

fn write_conv(out: &mut String, p: &ConvParams) {
    write_ints(out, "stride", &p.stride);
    write_ints(out, "padding", &p.padding);
    write_ints(out, "dilation", &p.dilation);
    let _ = write!(out, " groups={}", p.groups);
    write_ints(out, "output_padding", &p.output_padding);
}

fn write_data(out: &mut String, data: &Data) {
    let items: Vec<String> = match data {
        Data::F32(v) => v.iter().map(|&x| fmt_f32(x)).collect(),
        Data::F64(v) => v.iter().map(|&x| fmt_f64(x)).collect(),
        Data::I64(v) => v.iter().map(|x| x.to_string()).collect(),
        Data::Bool(v) => v.iter().map(|x| x.to_string()).collect(),
    };
    out.push('[');
    out.push_str(&items.join(", "));
    out.push(']');
}

/// An f64 in the shortest form that parses back to the same bits.
pub fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        if v.to_bits() == f64::NAN.to_bits() {
            "nan".into()
        } else {
            format!("nan(0x{:016x})", v.to_bits())
        }
    } else if v == f64::INFINITY {
        "inf".into()
    } else if v == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        format!("{v:?}")
    }
}

/// An f32 in the shortest form that parses back (as an f32) to the same bits.
pub fn fmt_f32(v: f32) -> String {
    if v.is_nan() {
        if v.to_bits() == f32::NAN.to_bits() {
            "nan".into()
        } else {
            format!("nan(0x{:08x})", v.to_bits())
        }
    } else if v == f32::INFINITY {
        "inf".into()
    } else if v == f32::NEG_INFINITY {
        "-inf".into()
    } else {
        format!("{v:?}")
    }
}

/// A double-quoted string with `\\ \" \n \r \t \0` and `\u{...}` (other control characters)
/// escapes; everything else, non-ASCII included, is written as is.
pub(crate) fn write_str_lit(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ----- structural equality ---------------------------------------------------------------------

#[derive(PartialEq)]
enum Ref {
    At(usize),
    Dangling(usize),
}

fn to_ref(graph: &Graph, num: &HashMap<NodeId, usize>, id: NodeId) -> Ref {
    match num.get(&id) {
        Some(&i) if graph.contains(id) => Ref::At(i),
        _ => Ref::Dangling(id.index()),
    }
}

/// Whether `a` and `b` are the same graph up to node numbering: the same nodes in
/// [`print_order`] with equal ops (floats compared bitwise, so NaN equals the same NaN),
/// types, locations, gradient tags and operands, and the same inputs, params and outputs in
/// the same order.
pub fn structurally_equal(a: &Graph, b: &Graph) -> bool {
    let (oa, ob) = (print_order(a), print_order(b));
    if oa.len() != ob.len() {
        return false;
    }
    let (na, nb) = (numbering(&oa), numbering(&ob));
    for (&ia, &ib) in oa.iter().zip(&ob) {
        let (x, y) = (a.node(ia), b.node(ib));
        if !op_eq(&x.op, &y.op) || x.ty != y.ty || x.loc != y.loc {
            return false;
        }
        let ga = x.grad_of.map(|g| to_ref(a, &na, g));
        let gb = y.grad_of.map(|g| to_ref(b, &nb, g));
        if ga != gb {
            return false;
        }
        let opa: Vec<Ref> = a
            .operands(ia)
            .into_iter()
            .map(|o| to_ref(a, &na, o))
            .collect();
        let opb: Vec<Ref> = b
            .operands(ib)
            .into_iter()
            .map(|o| to_ref(b, &nb, o))
            .collect();
        if opa != opb {
            return false;
        }
    }
    for (ma, mb) in [
        (&a.inputs, &b.inputs),
        (&a.params, &b.params),
        (&a.outputs, &b.outputs),
    ] {
        if ma.len() != mb.len() {
            return false;
        }
        for ((ka, &va), (kb, &vb)) in ma.iter().zip(mb) {
            if ka != kb || to_ref(a, &na, va) != to_ref(b, &nb, vb) {
                return false;
            }
        }
    }
    true
}

fn op_eq(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (Op::Full { value: v, ty: t }, Op::Full { value: w, ty: u }) => {
            v.to_bits() == w.to_bits() && t == u
        }
        (
            Op::Pad {
                lo: l1,
                hi: h1,
                value: v1,
            },
            Op::Pad {
                lo: l2,
                hi: h2,
                value: v2,
            },
        ) => l1 == l2 && h1 == h2 && v1.to_bits() == v2.to_bits(),
        (Op::Const(x), Op::Const(y)) => {
            x.shape == y.shape
                && match (&x.data, &y.data) {
                    (Data::F32(p), Data::F32(q)) => {
                        p.len() == q.len()
                            && p.iter().zip(q).all(|(s, t)| s.to_bits() == t.to_bits())
                    }
                    (Data::F64(p), Data::F64(q)) => {
                        p.len() == q.len()
                            && p.iter().zip(q).all(|(s, t)| s.to_bits() == t.to_bits())
                    }
                    (p, q) => p == q,
                }
        }
        _ => a == b,
    }
}

// ----- lexer -----------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// `%name`, without the `%`.
    Value(String),
    Ident(String),
    /// A number as written (sign, digits, `.`, exponent, hex digits).
    Num(String),
    /// A string literal, unescaped.
    Str(String),
    Punct(char),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    col: usize,
}

fn perr(line: usize, col: usize, msg: impl Into<String>) -> IrError {
    IrError::Parse {
        line,
        col,
        msg: msg.into(),
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

fn lex(src: &str, line: usize) -> Result<Vec<Token>> {
    let chars: Vec<char> = src.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let col = i + 1;
        match c {
            ' ' | '\t' | '\r' => i += 1,
            ';' => break,
            '%' => {
                let mut j = i + 1;
                while chars.get(j).is_some_and(|&c| is_name_char(c)) {
                    j += 1;
                }
                if j == i + 1 {
                    return Err(perr(
                        line,
                        col,
                        "expected a value name after `%` (like `%3`)",
                    ));
                }
                toks.push(Token {
                    tok: Tok::Value(chars[i + 1..j].iter().collect()),
                    col,
                });
                i = j;
            }
            '"' => {
                let (s, next) = lex_string(&chars, i, line)?;
                toks.push(Token {
                    tok: Tok::Str(s),
                    col,
                });
                i = next;
            }
            '=' | ',' | '[' | ']' | ':' | '(' | ')' | '@' | '{' | '}' => {
                toks.push(Token {
                    tok: Tok::Punct(c),
                    col,
                });
                i += 1;
            }
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+')
                    && chars
                        .get(i + 1)
                        .is_some_and(|n| n.is_ascii_alphanumeric() || *n == '.')) =>
            {
                let mut j = if c.is_ascii_digit() { i } else { i + 1 };
                let hex =
                    chars.get(j) == Some(&'0') && matches!(chars.get(j + 1), Some('x') | Some('X'));
                while let Some(&d) = chars.get(j) {
                    let exp_sign = (d == '+' || d == '-')
                        && !hex
                        && matches!(chars.get(j.wrapping_sub(1)), Some('e') | Some('E'));
                    if d.is_ascii_alphanumeric() || d == '.' || d == '_' || exp_sign {
                        j += 1;
                    } else {
                        break;
                    }
                }
                toks.push(Token {
                    tok: Tok::Num(chars[i..j].iter().collect()),
                    col,
                });
                i = j;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut j = i;
                while chars
                    .get(j)
                    .is_some_and(|&d| d.is_ascii_alphanumeric() || d == '_')
                {
                    j += 1;
                }
                toks.push(Token {
                    tok: Tok::Ident(chars[i..j].iter().collect()),
                    col,
                });
                i = j;
            }
            other => {
                return Err(perr(
                    line,
                    col,
                    format!("unexpected character `{}`", other.escape_debug()),
                ))
            }
        }
    }
    Ok(toks)
}

/// Lexes the string literal starting at `chars[start] == '"'`; returns it and the index after
/// the closing quote.
fn lex_string(chars: &[char], start: usize, line: usize) -> Result<(String, usize)> {
    let mut s = String::new();
    let mut j = start + 1;
    loop {
        match chars.get(j) {
            None => {
                return Err(perr(
                    line,
                    start + 1,
                    "unterminated string (strings end on the same line with `\"`)",
                ))
            }
            Some('"') => return Ok((s, j + 1)),
            Some('\\') => {
                let esc = match chars.get(j + 1) {
                    Some('n') => '\n',
                    Some('r') => '\r',
                    Some('t') => '\t',
                    Some('0') => '\0',
                    Some('\\') => '\\',
                    Some('"') => '"',
                    Some('u') => {
                        let bad = || {
                            perr(
                                line,
                                j + 1,
                                "invalid unicode escape (expected `\\u{...}` with 1 to 6 hex digits of a valid code point)",
                            )
                        };
                        if chars.get(j + 2) != Some(&'{') {
                            return Err(bad());
                        }
                        let mut k = j + 3;
                        let mut hex = String::new();
                        while let Some(&h) = chars.get(k) {
                            if h == '}' {
                                break;
                            }
                            hex.push(h);
                            k += 1;
                        }
                        if chars.get(k) != Some(&'}')
                            || hex.is_empty()
                            || hex.len() > 6
                            || !hex.chars().all(|h| h.is_ascii_hexdigit())
                        {
                            return Err(bad());
                        }
                        let ch = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(bad)?;
                        s.push(ch);
                        j = k + 1;
                        continue;
                    }
                    Some(other) => {
                        return Err(perr(
                            line,
                            j + 1,
                            format!(
                            "unknown escape `\\{}` (known: \\\\ \\\" \\n \\r \\t \\0 \\u{{...}})",
                            other.escape_debug()
                        ),
                        ))
                    }
                    None => {
                        return Err(perr(
                            line,
                            start + 1,
                            "unterminated string (strings end on the same line with `\"`)",
                        ))
                    }
                };
                s.push(esc);
                j += 2;
            }
            Some(&c) => {
                s.push(c);
                j += 1;
            }
        }
    }
}

// ----- line cursor -----------------------------------------------------------------------------

fn describe(t: Option<&Tok>) -> String {
    match t {
        None => "the end of the line".into(),
        Some(Tok::Value(v)) => format!("`%{v}`"),
        Some(Tok::Ident(s)) | Some(Tok::Num(s)) => format!("`{s}`"),
        Some(Tok::Str(s)) => format!("the string {s:?}"),
        Some(Tok::Punct(c)) => format!("`{c}`"),
    }
}

struct Cur<'t> {
    toks: &'t [Token],
    pos: usize,
    line: usize,
    eol_col: usize,
}

impl<'t> Cur<'t> {
    fn peek(&self) -> Option<&'t Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }
    fn peek2(&self) -> Option<&'t Tok> {
        self.toks.get(self.pos + 1).map(|t| &t.tok)
    }
    fn col(&self) -> usize {
        self.toks.get(self.pos).map_or(self.eol_col, |t| t.col)
    }
    fn err(&self, msg: impl Into<String>) -> IrError {
        perr(self.line, self.col(), msg)
    }
    fn bump(&mut self) -> Option<&'t Tok> {
        let t = self.peek();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }
    fn is_punct(&self, c: char) -> bool {
        self.peek() == Some(&Tok::Punct(c))
    }
    fn expect_punct(&mut self, c: char, context: &str) -> Result<()> {
        if self.is_punct(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(format!(
                "expected `{c}` {context}, found {}",
                describe(self.peek())
            )))
        }
    }
    fn expect_value(&mut self, what: &str) -> Result<(String, usize)> {
        let col = self.col();
        match self.peek() {
            Some(Tok::Value(v)) => {
                self.pos += 1;
                Ok((v.clone(), col))
            }
            t => Err(self.err(format!("expected {what} (`%name`), found {}", describe(t)))),
        }
    }
    fn expect_str(&mut self, what: &str) -> Result<String> {
        match self.peek() {
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(s.clone())
            }
            t => Err(self.err(format!(
                "expected {what} (a quoted string), found {}",
                describe(t)
            ))),
        }
    }
    fn expect_end(&self, context: &str) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            t => Err(self.err(format!(
                "unexpected {} {context} (trailing garbage)",
                describe(t)
            ))),
        }
    }
    /// An unsigned integer, at most [`MAX_INT`].
    fn expect_usize(&mut self, what: &str) -> Result<usize> {
        let col = self.col();
        match self.peek() {
            Some(Tok::Num(s)) => {
                self.pos += 1;
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(perr(
                        self.line,
                        col,
                        format!("expected {what} (an unsigned integer), found `{s}`"),
                    ));
                }
                match s.parse::<usize>() {
                    Ok(v) if v <= MAX_INT => Ok(v),
                    _ => Err(perr(
                        self.line,
                        col,
                        format!("integer {s} is too large (at most {MAX_INT})"),
                    )),
                }
            }
            t => Err(self.err(format!(
                "expected {what} (an unsigned integer), found {}",
                describe(t)
            ))),
        }
    }
    fn expect_u32(&mut self, what: &str) -> Result<u32> {
        let col = self.col();
        match self.peek() {
            Some(Tok::Num(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                self.pos += 1;
                s.parse::<u32>().map_err(|_| {
                    perr(
                        self.line,
                        col,
                        format!("{what} {s} is too large (at most {})", u32::MAX),
                    )
                })
            }
            t => Err(self.err(format!(
                "expected {what} (an unsigned integer), found {}",
                describe(t)
            ))),
        }
    }
    /// `[a,b,...]` of unsigned integers.
    fn int_list(&mut self, what: &str) -> Result<Vec<usize>> {
        self.expect_punct('[', &format!("to open {what}"))?;
        let mut v = Vec::new();
        if self.is_punct(']') {
            self.pos += 1;
            return Ok(v);
        }
        loop {
            v.push(self.expect_usize(what)?);
            if self.is_punct(',') {
                self.pos += 1;
            } else {
                self.expect_punct(']', &format!("or `,` in {what}"))?;
                return Ok(v);
            }
        }
    }
    /// `dtype[dims]`, with a bounded element count.
    fn tensor_type(&mut self) -> Result<TensorType> {
        let col = self.col();
        let dtype = match self.peek() {
            Some(Tok::Ident(s)) => DType::from_name(s).ok_or_else(|| {
                self.err(format!(
                    "unknown dtype `{s}` (expected f32, f64, i64 or bool)"
                ))
            })?,
            t => {
                return Err(self.err(format!(
                    "expected a type like `f32[2,3]`, found {}",
                    describe(t)
                )))
            }
        };
        self.pos += 1;
        let shape = self.int_list("the shape")?;
        check_numel(&shape, self.line, col)?;
        Ok(TensorType::new(dtype, shape))
    }
    /// A float scalar as written: a number, `nan`, `inf` or `nan(0x...)`; with `bools`,
    /// also `true` or `false`.
    fn scalar_text(&mut self, what: &str, bools: bool) -> Result<(String, usize)> {
        let col = self.col();
        match self.peek() {
            Some(Tok::Num(s)) => {
                self.pos += 1;
                Ok((s.clone(), col))
            }
            Some(Tok::Ident(s)) if s == "inf" => {
                self.pos += 1;
                Ok((s.clone(), col))
            }
            Some(Tok::Ident(s)) if bools && (s == "true" || s == "false") => {
                self.pos += 1;
                Ok((s.clone(), col))
            }
            Some(Tok::Ident(s)) if s == "nan" => {
                self.pos += 1;
                if !self.is_punct('(') {
                    return Ok(("nan".into(), col));
                }
                self.pos += 1;
                let bits = match self.peek() {
                    Some(Tok::Num(h)) => h.clone(),
                    t => {
                        return Err(self.err(format!(
                            "expected NaN bits like `0x7ff8000000000001`, found {}",
                            describe(t)
                        )))
                    }
                };
                self.pos += 1;
                self.expect_punct(')', "to close the NaN bits")?;
                Ok((format!("nan({bits})"), col))
            }
            t => Err(self.err(format!("expected {what}, found {}", describe(t)))),
        }
    }
}

fn check_numel(shape: &[usize], line: usize, col: usize) -> Result<()> {
    let mut n: usize = 1;
    for &d in shape {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= (1 << 62))
            .ok_or_else(|| perr(line, col, format!("shape {shape:?} has too many elements")))?;
    }
    Ok(())
}

fn is_decimal(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
}

fn nan_bits(s: &str) -> Option<&str> {
    let hex = s.strip_prefix("nan(0x")?.strip_suffix(')')?;
    (!hex.is_empty() && hex.len() <= 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(hex)
}

fn parse_f64_text(s: &str) -> Option<f64> {
    match s {
        "nan" => return Some(f64::NAN),
        "inf" | "+inf" => return Some(f64::INFINITY),
        "-inf" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    if let Some(hex) = nan_bits(s) {
        let v = f64::from_bits(u64::from_str_radix(hex, 16).ok()?);
        return v.is_nan().then_some(v);
    }
    if !is_decimal(s) {
        return None;
    }
    s.parse().ok()
}

fn parse_f32_text(s: &str) -> Option<f32> {
    match s {
        "nan" => return Some(f32::NAN),
        "inf" | "+inf" => return Some(f32::INFINITY),
        "-inf" => return Some(f32::NEG_INFINITY),
        _ => {}
    }
    if let Some(hex) = nan_bits(s) {
        let v = f32::from_bits(u32::from_str_radix(hex, 16).ok()?);
        return v.is_nan().then_some(v);
    }
    if !is_decimal(s) {
        return None;
    }
    s.parse().ok()
}

// ----- parser ----------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Debug)]
enum AttrKind {
    Ints,
    Int,
    Float,
    DType,
    Type,
    Ranges,
}

#[derive(Clone, Debug)]
enum AttrVal {
    Ints(Vec<usize>),
    Int(usize),
    Float(f64),
    DType(DType),
    Type(TensorType),
    Ranges(Vec<SliceAxis>),
}

const CONV_ATTRS: &[(&str, AttrKind)] = &[
    ("stride", AttrKind::Ints),
    ("padding", AttrKind::Ints),
    ("dilation", AttrKind::Ints),
    ("groups", AttrKind::Int),
    ("output_padding", AttrKind::Ints),
];

const CONV_WEIGHT_ATTRS: &[(&str, AttrKind)] = &[
    ("stride", AttrKind::Ints),
    ("padding", AttrKind::Ints),
    ("dilation", AttrKind::Ints),
    ("groups", AttrKind::Int),
    ("output_padding", AttrKind::Ints),
    ("kernel", AttrKind::Ints),
];

/// The attributes an op takes; all are required except `ty`.
fn attr_spec(op: &Op) -> &'static [(&'static str, AttrKind)] {
    match op {
        Op::Input { .. } | Op::Param { .. } | Op::Const(_) | Op::Full { .. } => {
            &[("ty", AttrKind::Type)]
        }
        Op::Cast(_) => &[("dtype", AttrKind::DType)],
        Op::Reduce { .. } => &[("axes", AttrKind::Ints)],
        Op::Reshape(_) | Op::Expand(_) => &[("shape", AttrKind::Ints)],
        Op::Permute(_) => &[("perm", AttrKind::Ints)],
        Op::Slice(_) => &[("ranges", AttrKind::Ranges)],
        Op::Pad { .. } => &[
            ("lo", AttrKind::Ints),
            ("hi", AttrKind::Ints),
            ("value", AttrKind::Float),
        ],
        Op::Concat(_) => &[("axis", AttrKind::Int)],
        Op::Conv(_) | Op::ConvTranspose(_) => CONV_ATTRS,
        Op::ConvWeight { .. } => CONV_WEIGHT_ATTRS,
        Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Detach | Op::MatMul => &[],
    }
}

/// An op with placeholder attributes for a mnemonic, or `None` if there is no such op.
fn template(name: &str) -> Option<Op> {
    let ty = TensorType::new(DType::F32, Vec::<usize>::new());
    let conv = ConvParams::new(0);
    Some(match name {
        "input" => Op::Input {
            name: String::new(),
            ty,
        },
        "param" => Op::Param {
            name: String::new(),
            ty,
        },
        "const" => Op::Const(Arc::new(Literal::scalar_f32(0.0))),
        "full" => Op::Full { value: 0.0, ty },
        "neg" => Op::Unary(UnaryOp::Neg),
        "exp" => Op::Unary(UnaryOp::Exp),
        "log" => Op::Unary(UnaryOp::Log),
        "sqrt" => Op::Unary(UnaryOp::Sqrt),
        "recip" => Op::Unary(UnaryOp::Recip),
        "abs" => Op::Unary(UnaryOp::Abs),
        "tanh" => Op::Unary(UnaryOp::Tanh),
        "sigmoid" => Op::Unary(UnaryOp::Sigmoid),
        "add" => Op::Binary(BinaryOp::Add),
        "sub" => Op::Binary(BinaryOp::Sub),
        "mul" => Op::Binary(BinaryOp::Mul),
        "div" => Op::Binary(BinaryOp::Div),
        "max" => Op::Binary(BinaryOp::Max),
        "min" => Op::Binary(BinaryOp::Min),
        "pow" => Op::Binary(BinaryOp::Pow),
        "eq" => Op::Compare(CmpOp::Eq),
        "ne" => Op::Compare(CmpOp::Ne),
        "lt" => Op::Compare(CmpOp::Lt),
        "le" => Op::Compare(CmpOp::Le),
        "gt" => Op::Compare(CmpOp::Gt),
        "ge" => Op::Compare(CmpOp::Ge),
        "where" => Op::Where,
        "cast" => Op::Cast(DType::F32),
        "detach" => Op::Detach,
        "reduce_sum" => Op::Reduce {
            op: ReduceOp::Sum,
            axes: vec![],
        },
        "reduce_max" => Op::Reduce {
            op: ReduceOp::Max,
            axes: vec![],
        },
        "reshape" => Op::Reshape(vec![]),
        "permute" => Op::Permute(vec![]),
        "expand" => Op::Expand(vec![]),
        "slice" => Op::Slice(vec![]),
        "pad" => Op::Pad {
            lo: vec![],
            hi: vec![],
            value: 0.0,
        },
        "concat" => Op::Concat(0),
        "matmul" => Op::MatMul,
        "conv" => Op::Conv(conv),
        "conv_transpose" => Op::ConvTranspose(conv),
        "conv_weight" => Op::ConvWeight {
            params: conv,
            kernel: vec![],
        },
        _ => return None,
    })
}

/// Parsed attributes of one node, looked up by the op builder.
struct Attrs {
    vals: Vec<(&'static str, AttrVal)>,
    op: &'static str,
    line: usize,
    eol_col: usize,
}

impl Attrs {
    fn get(&self, name: &str) -> Option<&AttrVal> {
        self.vals.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
    fn missing(&self, name: &str) -> IrError {
        perr(
            self.line,
            self.eol_col,
            format!("`{}` is missing attribute `{name}`", self.op),
        )
    }
    fn ints(&self, name: &str) -> Result<Vec<usize>> {
        match self.get(name) {
            Some(AttrVal::Ints(v)) => Ok(v.clone()),
            _ => Err(self.missing(name)),
        }
    }
    fn int(&self, name: &str) -> Result<usize> {
        match self.get(name) {
            Some(AttrVal::Int(v)) => Ok(*v),
            _ => Err(self.missing(name)),
        }
    }
    fn float(&self, name: &str) -> Result<f64> {
        match self.get(name) {
            Some(AttrVal::Float(v)) => Ok(*v),
            _ => Err(self.missing(name)),
        }
    }
    fn dtype(&self, name: &str) -> Result<DType> {
        match self.get(name) {
            Some(AttrVal::DType(v)) => Ok(*v),
            _ => Err(self.missing(name)),
        }
    }
    fn ranges(&self, name: &str) -> Result<Vec<SliceAxis>> {
        match self.get(name) {
            Some(AttrVal::Ranges(v)) => Ok(v.clone()),
            _ => Err(self.missing(name)),
        }
    }
    fn ty(&self) -> Option<TensorType> {
        match self.get("ty") {
            Some(AttrVal::Type(t)) => Some(t.clone()),
            _ => None,
        }
    }
    fn conv(&self) -> Result<ConvParams> {
        Ok(ConvParams {
            stride: self.ints("stride")?,
            padding: self.ints("padding")?,
            dilation: self.ints("dilation")?,
            groups: self.int("groups")?,
            output_padding: self.ints("output_padding")?,
        })
    }
}

/// The positional argument of a leaf op.
enum Positional {
    None,
    Name(String),
    Data(Vec<(String, usize)>),
    Value(f64),
}

#[derive(Default)]
struct Parser {
    graph: Graph,
    /// Value names to node and defining line.
    names: HashMap<String, (NodeId, usize)>,
    /// Line and column of each node, by node index.
    node_pos: Vec<(usize, usize)>,
    /// `grad(%name)` tags to resolve at the end: node, name, line, column.
    grads: Vec<(NodeId, String, usize, usize)>,
    /// Outputs to resolve at the end: name, value name, line, column.
    outputs: Vec<(String, String, usize, usize)>,
}

/// Parses the text form (see the module documentation and `docs/ir.md`). Checks each
/// node's declared type against shape inference and verifies the graph; every problem is an
/// [`IrError::Parse`] with the line and column (1-based, in characters) where it was found.
pub fn parse(src: &str) -> Result<Graph> {
    enum State {
        Before,
        Body,
        After(usize),
    }
    let mut state = State::Before;
    let mut p = Parser::default();
    let mut last_line = 1;
    for (i, raw) in src.split('\n').enumerate() {
        let line = i + 1;
        last_line = line;
        let toks = lex(raw, line)?;
        if toks.is_empty() {
            continue;
        }
        let mut c = Cur {
            toks: &toks,
            pos: 0,
            line,
            eol_col: raw.chars().count() + 1,
        };
        match state {
            State::Before => {
                match c.peek() {
                    Some(Tok::Ident(s)) if s == "graph" => c.pos += 1,
                    t => {
                        return Err(c.err(format!(
                            "expected `graph {{` to start the graph, found {}",
                            describe(t)
                        )))
                    }
                }
                c.expect_punct('{', "after `graph`")?;
                c.expect_end("after `graph {`")?;
                state = State::Body;
            }
            State::Body => match c.peek() {
                Some(Tok::Punct('}')) => {
                    c.pos += 1;
                    c.expect_end("after the closing `}`")?;
                    state = State::After(line);
                }
                Some(Tok::Value(_)) => p.node_stmt(&mut c)?,
                Some(Tok::Ident(s)) if s == "output" => p.output_stmt(&mut c)?,
                t => {
                    return Err(c.err(format!(
                        "expected a node `%name: type = op ...`, an `output \"name\" = %value` or `}}`, found {}",
                        describe(t)
                    )))
                }
            },
            State::After(_) => {
                return Err(c.err(format!(
                    "unexpected {} after the end of the graph (trailing garbage)",
                    describe(c.peek())
                )))
            }
        }
    }
    match state {
        State::Before => Err(perr(
            last_line,
            1,
            "unexpected end of input: expected `graph {`",
        )),
        State::Body => Err(perr(
            last_line,
            1,
            "unexpected end of input: missing the closing `}`",
        )),
        State::After(close) => p.finish(close),
    }
}

impl Parser {
    fn lookup(&self, name: &str, line: usize, col: usize) -> Result<NodeId> {
        self.names
            .get(name)
            .map(|&(id, _)| id)
            .ok_or_else(|| perr(line, col, format!("undefined value %{name}")))
    }

    fn output_stmt(&mut self, c: &mut Cur) -> Result<()> {
        c.pos += 1; // `output`
        let name_col = c.col();
        let name = c.expect_str("the output's name")?;
        if let Some((_, _, l, _)) = self.outputs.iter().find(|o| o.0 == name) {
            return Err(perr(
                c.line,
                name_col,
                format!("output {name:?} is already defined on line {l}"),
            ));
        }
        c.expect_punct('=', "after the output's name")?;
        let (value, col) = c.expect_value("the output's value")?;
        c.expect_end("after the output")?;
        self.outputs.push((name, value, c.line, col));
        Ok(())
    }

    fn node_stmt(&mut self, c: &mut Cur) -> Result<()> {
        let line = c.line;
        let (name, name_col) = c.expect_value("a value name")?;
        if let Some(&(_, l)) = self.names.get(&name) {
            return Err(perr(
                line,
                name_col,
                format!("value %{name} is already defined on line {l}"),
            ));
        }
        c.expect_punct(':', "after the value name")?;
        let ty_col = c.col();
        let ty = c.tensor_type()?;
        c.expect_punct('=', "after the type")?;
        let op_col = c.col();
        let template = match c.bump() {
            Some(Tok::Ident(s)) => template(s).ok_or_else(|| {
                perr(
                    line,
                    op_col,
                    format!("unknown op `{s}` (known ops: {})", OP_NAMES.join(", ")),
                )
            })?,
            t => {
                return Err(perr(
                    line,
                    op_col,
                    format!("expected an op name, found {}", describe(t)),
                ))
            }
        };
        let opname = template.name();

        // positional argument of leaves
        let positional = match &template {
            Op::Input { .. } | Op::Param { .. } => {
                Positional::Name(c.expect_str(&format!("the {opname}'s name"))?)
            }
            Op::Const(_) => {
                c.expect_punct('[', "to open the constant's data")?;
                let mut items = Vec::new();
                if c.is_punct(']') {
                    c.pos += 1;
                } else {
                    loop {
                        items.push(c.scalar_text("a constant element", true)?);
                        if c.is_punct(',') {
                            c.pos += 1;
                        } else {
                            c.expect_punct(']', "or `,` in the constant's data")?;
                            break;
                        }
                    }
                }
                Positional::Data(items)
            }
            Op::Full { .. } => {
                let (s, col) = c.scalar_text("the fill value (a number)", false)?;
                Positional::Value(
                    parse_f64_text(&s)
                        .ok_or_else(|| perr(line, col, format!("invalid number `{s}`")))?,
                )
            }
            _ => Positional::None,
        };

        // operands
        let mut operands = Vec::new();
        if !template.is_leaf() {
            loop {
                let (v, col) = c.expect_value(&format!("an operand of `{opname}`"))?;
                operands.push(self.lookup(&v, line, col)?);
                if c.is_punct(',') {
                    c.pos += 1;
                } else {
                    break;
                }
            }
            if let Some(n) = template.arity() {
                if operands.len() != n {
                    return Err(perr(
                        line,
                        op_col,
                        format!("`{opname}` takes {n} operand(s), got {}", operands.len()),
                    ));
                }
            }
        }

        // attributes, gradient tag, location
        let spec = attr_spec(&template);
        let mut attrs = Attrs {
            vals: Vec::new(),
            op: opname,
            line,
            eol_col: c.eol_col,
        };
        let mut grad: Option<(String, usize)> = None;
        let mut loc: Option<Loc> = None;
        loop {
            let col = c.col();
            match (c.peek(), c.peek2()) {
                (None, _) => break,
                (Some(Tok::Ident(a)), Some(Tok::Punct('='))) => {
                    if grad.is_some() || loc.is_some() {
                        return Err(c.err(
                            "attributes come before `grad(...)` and the `@` location",
                        ));
                    }
                    let Some(&(key, kind)) = spec.iter().find(|(k, _)| k == a) else {
                        let known: Vec<&str> = spec.iter().map(|(k, _)| *k).collect();
                        return Err(c.err(if known.is_empty() {
                            format!("unknown attribute `{a}`: `{opname}` takes no attributes")
                        } else {
                            format!(
                                "unknown attribute `{a}` for `{opname}` (it takes {})",
                                known.join(", ")
                            )
                        }));
                    };
                    if attrs.get(key).is_some() {
                        return Err(c.err(format!("attribute `{key}` is given twice")));
                    }
                    c.pos += 2;
                    let v = parse_attr(c, key, kind)?;
                    attrs.vals.push((key, v));
                }
                (Some(Tok::Ident(g)), Some(Tok::Punct('('))) if g == "grad" => {
                    if grad.is_some() {
                        return Err(c.err("the gradient tag is given twice"));
                    }
                    if loc.is_some() {
                        return Err(c.err("`grad(...)` comes before the `@` location"));
                    }
                    c.pos += 2;
                    grad = Some(c.expect_value("the forward node of the gradient tag")?);
                    c.expect_punct(')', "to close `grad(`")?;
                }
                (Some(Tok::Punct('@')), _) => {
                    if loc.is_some() {
                        return Err(c.err("the location is given twice"));
                    }
                    c.pos += 1;
                    let file = c.expect_str("the location's file")?;
                    c.expect_punct(':', "after the location's file")?;
                    let l = c.expect_u32("the location's line")?;
                    c.expect_punct(':', "after the location's line")?;
                    let cl = c.expect_u32("the location's column")?;
                    loc = Some(Loc {
                        file: Cow::Owned(file),
                        line: l,
                        col: cl,
                    });
                }
                (t, _) => {
                    return Err(perr(
                        line,
                        col,
                        format!(
                            "unexpected {}: expected an attribute `name=value`, `grad(%n)`, `@ \"file\":line:col` or the end of the line",
                            describe(t)
                        ),
                    ))
                }
            }
        }

        let op = build_op(template, positional, &attrs, &ty)?;

        // type check against shape inference
        let tys: Vec<&TensorType> = operands.iter().map(|&o| self.graph.ty(o)).collect();
        if matches!(op, Op::Conv(_) | Op::ConvTranspose(_))
            && tys
                .get(1)
                .is_some_and(|w| w.shape.iter().skip(2).any(|&k| k == 0))
        {
            return Err(perr(
                line,
                op_col,
                format!("`{opname}`: the weight has a zero-size kernel"),
            ));
        }
        let inferred =
            infer(&op, &tys).map_err(|m| perr(line, op_col, format!("`{opname}`: {m}")))?;
        if inferred != ty {
            return Err(perr(
                line,
                ty_col,
                format!(
                    "declared type {ty} does not match the type {inferred} that `{opname}` gives"
                ),
            ));
        }
        if let Op::Input { name: n, .. } | Op::Param { name: n, .. } = &op {
            let map = if matches!(op, Op::Input { .. }) {
                &self.graph.inputs
            } else {
                &self.graph.params
            };
            if map.contains_key(n) {
                return Err(perr(
                    line,
                    op_col,
                    format!("there is already {opname} {n:?}: names must be unique"),
                ));
            }
        }
        let id = self.graph.push_node(
            Node {
                op,
                ty,
                loc,
                grad_of: None,
            },
            &operands,
        );
        if let Some((g, col)) = grad {
            self.grads.push((id, g, line, col));
        }
        self.names.insert(name, (id, line));
        self.node_pos.push((line, name_col));
        Ok(())
    }

    fn finish(mut self, close_line: usize) -> Result<Graph> {
        for (id, name, line, col) in std::mem::take(&mut self.grads) {
            let f = self.lookup(&name, line, col)?;
            self.graph.node_mut(id).grad_of = Some(f);
        }
        for (name, value, line, col) in std::mem::take(&mut self.outputs) {
            let id = self.lookup(&value, line, col)?;
            self.graph.set_output(name, id);
        }
        verify(&self.graph).map_err(|e| match e {
            IrError::Verify { ctx, msg } => {
                let (line, col) = self
                    .node_pos
                    .get(ctx.node)
                    .copied()
                    .unwrap_or((close_line, 1));
                perr(line, col, format!("verifier: {msg}"))
            }
            IrError::Graph(msg) => perr(close_line, 1, format!("verifier: {msg}")),
            other => other,
        })?;
        Ok(self.graph)
    }
}

fn parse_attr(c: &mut Cur, key: &str, kind: AttrKind) -> Result<AttrVal> {
    let col = c.col();
    Ok(match kind {
        AttrKind::Ints => {
            let v = c.int_list(&format!("`{key}`"))?;
            if key == "shape" {
                check_numel(&v, c.line, col)?;
            }
            AttrVal::Ints(v)
        }
        AttrKind::Int => AttrVal::Int(c.expect_usize(&format!("`{key}`"))?),
        AttrKind::Float => {
            let (s, col) = c.scalar_text(&format!("`{key}` (a number)"), false)?;
            AttrVal::Float(
                parse_f64_text(&s)
                    .ok_or_else(|| perr(c.line, col, format!("invalid number `{s}`")))?,
            )
        }
        AttrKind::DType => match c.bump() {
            Some(Tok::Ident(s)) => AttrVal::DType(DType::from_name(s).ok_or_else(|| {
                perr(
                    c.line,
                    col,
                    format!("unknown dtype `{s}` (expected f32, f64, i64 or bool)"),
                )
            })?),
            t => {
                return Err(perr(
                    c.line,
                    col,
                    format!("expected a dtype for `{key}`, found {}", describe(t)),
                ))
            }
        },
        AttrKind::Type => AttrVal::Type(c.tensor_type()?),
        AttrKind::Ranges => {
            c.expect_punct('[', "to open the slice ranges")?;
            let mut v = Vec::new();
            if c.is_punct(']') {
                c.pos += 1;
            } else {
                loop {
                    let start = c.expect_usize("a range start")?;
                    c.expect_punct(':', "after the range start (ranges are `start:end:step`)")?;
                    let end = c.expect_usize("a range end")?;
                    c.expect_punct(':', "after the range end (ranges are `start:end:step`)")?;
                    let step = c.expect_usize("a range step")?;
                    v.push(SliceAxis { start, end, step });
                    if c.is_punct(',') {
                        c.pos += 1;
                    } else {
                        c.expect_punct(']', "or `,` in the slice ranges")?;
                        break;
                    }
                }
            }
            AttrVal::Ranges(v)
        }
    })
}

fn build_op(template: Op, positional: Positional, a: &Attrs, ty: &TensorType) -> Result<Op> {
    let own_ty = a.ty().unwrap_or_else(|| ty.clone());
    Ok(match template {
        Op::Input { .. } | Op::Param { .. } => {
            let Positional::Name(name) = positional else {
                return Err(a.missing("name"));
            };
            if matches!(template, Op::Input { .. }) {
                Op::Input { name, ty: own_ty }
            } else {
                Op::Param { name, ty: own_ty }
            }
        }
        Op::Full { .. } => {
            let Positional::Value(value) = positional else {
                return Err(a.missing("value"));
            };
            Op::Full { value, ty: own_ty }
        }
        Op::Const(_) => {
            let Positional::Data(items) = positional else {
                return Err(a.missing("data"));
            };
            let line = a.line;
            let bad = |s: &str, col: usize, what: &str| {
                perr(line, col, format!("invalid {what} `{s}` in the constant"))
            };
            let data = match own_ty.dtype {
                DType::F32 => Data::F32(
                    items
                        .iter()
                        .map(|(s, col)| parse_f32_text(s).ok_or_else(|| bad(s, *col, "f32")))
                        .collect::<Result<_>>()?,
                ),
                DType::F64 => Data::F64(
                    items
                        .iter()
                        .map(|(s, col)| parse_f64_text(s).ok_or_else(|| bad(s, *col, "f64")))
                        .collect::<Result<_>>()?,
                ),
                DType::I64 => Data::I64(
                    items
                        .iter()
                        .map(|(s, col)| {
                            let digits = s.strip_prefix('-').unwrap_or(s);
                            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                                return Err(bad(s, *col, "i64"));
                            }
                            s.parse::<i64>().map_err(|_| bad(s, *col, "i64"))
                        })
                        .collect::<Result<_>>()?,
                ),
                DType::Bool => Data::Bool(
                    items
                        .iter()
                        .map(|(s, col)| match s.as_str() {
                            "true" => Ok(true),
                            "false" => Ok(false),
                            _ => Err(bad(s, *col, "bool")),
                        })
                        .collect::<Result<_>>()?,
                ),
            };
            let lit = Literal::new(own_ty.shape.clone(), data).map_err(|m| {
                perr(
                    line,
                    a.eol_col,
                    format!("the constant's data does not fit its type {own_ty}: {m}"),
                )
            })?;
            Op::Const(Arc::new(lit))
        }
        Op::Cast(_) => Op::Cast(a.dtype("dtype")?),
        Op::Reduce { op, .. } => Op::Reduce {
            op,
            axes: a.ints("axes")?,
        },
        Op::Reshape(_) => Op::Reshape(a.ints("shape")?),
        Op::Expand(_) => Op::Expand(a.ints("shape")?),
        Op::Permute(_) => Op::Permute(a.ints("perm")?),
        Op::Slice(_) => Op::Slice(a.ranges("ranges")?),
        Op::Pad { .. } => Op::Pad {
            lo: a.ints("lo")?,
            hi: a.ints("hi")?,
            value: a.float("value")?,
        },
        Op::Concat(_) => Op::Concat(a.int("axis")?),
        Op::Conv(_) => Op::Conv(a.conv()?),
        Op::ConvTranspose(_) => Op::ConvTranspose(a.conv()?),
        Op::ConvWeight { .. } => Op::ConvWeight {
            params: a.conv()?,
            kernel: a.ints("kernel")?,
        },
        op @ (Op::Unary(_)
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Where
        | Op::Detach
        | Op::MatMul) => op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_names_match_templates() {
        for name in OP_NAMES {
            let op = template(name).unwrap();
            assert_eq!(op.name(), name);
        }
        assert!(template("bogus").is_none());
    }

    #[test]
    fn floats_print_shortest_and_round_trip() {
        for v in [
            0.0,
            -0.0,
            1.0,
            0.1,
            1e-300,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001),
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let s = fmt_f64(v);
            assert_eq!(parse_f64_text(&s).unwrap().to_bits(), v.to_bits(), "{s}");
        }
        for v in [0.1f32, 1e-45, f32::MAX, -f32::NAN, f32::NAN, 3.4028235e38] {
            let s = fmt_f32(v);
            assert_eq!(parse_f32_text(&s).unwrap().to_bits(), v.to_bits(), "{s}");
        }
        assert_eq!(fmt_f64(1.0), "1.0");
        assert!(parse_f64_text("nan(0x3ff0000000000000)").is_none());
        assert!(parse_f64_text("infinity").is_none());
    }

    #[test]
    fn strings_escape_and_lex_back() {
        let s = "a \"q\" \\ \n\t\r\0 \u{7} é ∂ 🦀 ; %";
        let mut out = String::new();
        write_str_lit(&mut out, s);
        let toks = lex(&out, 1).unwrap();
        assert_eq!(toks.len(), 1);
        assert_eq!(toks[0].tok, Tok::Str(s.to_string()));
    }
}
