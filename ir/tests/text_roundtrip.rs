//! Round-trip, golden-file and error tests of the IR text form (`kiln_ir::text`).

use kiln_ir::graph::{Graph, Loc, Node};
use kiln_ir::text::{parse, print, structurally_equal, OP_NAMES};
use kiln_ir::{
    verify, BinaryOp, CmpOp, ConvParams, DType, Data, IrError, Literal, NodeId, Op, ReduceOp,
    SliceAxis, TensorType, UnaryOp,
};
use std::borrow::Cow;
use std::path::Path;

fn t(dtype: DType, shape: &[usize]) -> TensorType {
    TensorType::new(dtype, shape.to_vec())
}

fn f32t(shape: &[usize]) -> TensorType {
    t(DType::F32, shape)
}

fn loc(file: &str, line: u32, col: u32) -> Option<Loc> {
    Some(Loc {
        file: Cow::Owned(file.to_string()),
        line,
        col,
    })
}

fn conv_params(
    stride: &[usize],
    padding: &[usize],
    dilation: &[usize],
    groups: usize,
    output_padding: &[usize],
) -> ConvParams {
    ConvParams {
        stride: stride.to_vec(),
        padding: padding.to_vec(),
        dilation: dilation.to_vec(),
        groups,
        output_padding: output_padding.to_vec(),
    }
}

/// A graph using every op, every attribute, every dtype and the awkward corners of the
/// format (odd floats, escaped names and files, gradient tags, holes in the node indices,
/// an index order that is not topological).
fn all_ops_graph() -> Graph {
    let mut g = Graph::new();
    g.set_origin(loc("src/model.rs", 1, 1), None);
    let x = g.input("x", f32t(&[2, 3])).unwrap();
    let y = g
        .input("y \"quoted\" \\ back; semi\ttab\nnewline é", f32t(&[2, 3]))
        .unwrap();
    let labels = g.input("labels", t(DType::I64, &[2])).unwrap();
    let mask = g.input("mask", t(DType::Bool, &[2, 3])).unwrap();
    let w = g.param("layer.0.weight", f32t(&[3, 4])).unwrap();
    let w64 = g.param("w64", t(DType::F64, &[2, 3])).unwrap();
    g.set_origin(loc("src/dir \"q\"/ünïcødé ∂ 🦀.rs", 12, 9), None);

    let mut outs: Vec<NodeId> = Vec::new();
    for u in [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Recip,
        UnaryOp::Abs,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
    ] {
        outs.push(g.unary(u, x).unwrap());
    }
    outs.push(g.unary(UnaryOp::Neg, labels).unwrap());
    let mut prod = x;
    for b in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
    ] {
        let r = g.binary(b, x, y).unwrap();
        if b == BinaryOp::Mul {
            prod = r;
        }
        outs.push(r);
    }
    let mut cond = None;
    for c in [
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ] {
        let r = g.compare(c, x, y).unwrap();
        cond.get_or_insert(r);
        outs.push(r);
    }
    outs.push(g.select(cond.unwrap(), x, y).unwrap());
    outs.push(g.select(mask, y, x).unwrap());
    for d in DType::ALL {
        outs.push(g.cast(x, d).unwrap());
    }
    outs.push(g.cast(labels, DType::F64).unwrap());
    outs.push(g.push(Op::Detach, &[x]).unwrap());
    outs.push(g.reduce(ReduceOp::Sum, x, vec![1]).unwrap());
    outs.push(g.reduce(ReduceOp::Max, x, vec![0, 1]).unwrap());
    outs.push(g.reduce(ReduceOp::Sum, w64, vec![]).unwrap());
    let r = g.reshape(x, vec![3, 2]).unwrap();
    outs.push(g.reshape(r, vec![6]).unwrap());
    outs.push(g.permute(x, vec![1, 0]).unwrap());
    let col = g.reduce(ReduceOp::Max, x, vec![1]).unwrap();
    outs.push(g.expand(col, vec![2, 5]).unwrap());
    outs.push(
        g.slice(
            x,
            vec![
                SliceAxis {
                    start: 0,
                    end: 2,
                    step: 1,
                },
                SliceAxis {
                    start: 1,
                    end: 3,
                    step: 2,
                },
            ],
        )
        .unwrap(),
    );
    outs.push(
        g.slice(
            x,
            vec![
                SliceAxis {
                    start: 1,
                    end: 1,
                    step: 3,
                },
                SliceAxis::full(3),
            ],
        )
        .unwrap(),
    );
    outs.push(g.pad(x, vec![1, 0], vec![0, 2], -0.0).unwrap());
    outs.push(g.pad(x, vec![0, 0], vec![3, 1], f64::NAN).unwrap());
    outs.push(g.pad(w64, vec![2, 1], vec![1, 0], -f64::INFINITY).unwrap());
    outs.push(g.concat(&[x, y, x], 1).unwrap());
    outs.push(g.concat(&[x, prod, y], 0).unwrap());
    outs.push(g.concat(&[x], 0).unwrap());
    outs.push(g.matmul(x, w).unwrap());
    let a3 = g.input("a3", t(DType::F64, &[5, 2, 3])).unwrap();
    let b3 = g.param("b3", t(DType::F64, &[5, 3, 7])).unwrap();
    outs.push(g.matmul(a3, b3).unwrap());

    // convolutions, 1-d to 3-d, with groups, strides, padding, dilation
    g.set_origin(loc("src/conv.rs", 40, 5), None);
    let x1 = g.input("x1", f32t(&[2, 4, 10])).unwrap();
    let w1 = g.param("w1", f32t(&[6, 2, 3])).unwrap();
    let p1 = conv_params(&[2], &[1], &[2], 2, &[0]);
    let y1 = g.conv(x1, w1, p1.clone()).unwrap();
    outs.push(y1);
    outs.push(g.conv_weight(x1, y1, p1, vec![3]).unwrap());
    let x2 = g.input("x2", f32t(&[1, 3, 8, 8])).unwrap();
    let w2 = g.param("w2", f32t(&[4, 3, 3, 3])).unwrap();
    let y2 = g.conv(x2, w2, ConvParams::new(2)).unwrap();
    outs.push(y2);
    outs.push(
        g.conv_weight(x2, y2, ConvParams::new(2), vec![3, 3])
            .unwrap(),
    );
    let x3 = g.input("x3", t(DType::F64, &[1, 2, 5, 5, 5])).unwrap();
    let w3 = g.param("w3", t(DType::F64, &[2, 1, 2, 2, 2])).unwrap();
    let p3 = conv_params(&[1, 2, 1], &[0, 1, 0], &[1, 1, 2], 2, &[0, 0, 0]);
    let y3 = g.conv(x3, w3, p3.clone()).unwrap();
    outs.push(y3);
    outs.push(g.conv_weight(x3, y3, p3, vec![2, 2, 2]).unwrap());
    let xt = g.input("xt", f32t(&[1, 4, 5, 5])).unwrap();
    let wt = g.param("wt", f32t(&[4, 3, 3, 3])).unwrap();
    outs.push(
        g.conv_transpose(xt, wt, conv_params(&[2, 2], &[1, 1], &[1, 1], 2, &[1, 0]))
            .unwrap(),
    );
    let wt1 = g.param("wt1", f32t(&[6, 2, 3])).unwrap();
    outs.push(
        g.conv_transpose(y1, wt1, conv_params(&[3], &[0], &[2], 1, &[1]))
            .unwrap(),
    );
    let wt3 = g.param("wt3", t(DType::F64, &[2, 2, 1, 2, 3])).unwrap();
    outs.push(
        g.conv_transpose(
            x3,
            wt3,
            conv_params(&[1, 1, 2], &[0, 0, 1], &[1, 2, 1], 1, &[0, 0, 1]),
        )
        .unwrap(),
    );

    // constants of every dtype, odd floats included
    g.set_origin(None, None);
    let f32_data = vec![
        1.5f32,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-45,
        f32::MAX,
        0.1,
        f32::from_bits(0x7fc0_0001),
        -f32::NAN,
        f32::MIN_POSITIVE,
        16777217.0,
    ];
    outs.push(
        g.constant(Literal::new([3, 4], Data::F32(f32_data)).unwrap())
            .unwrap(),
    );
    outs.push(
        g.constant(
            Literal::new(
                [2, 2, 2],
                Data::F64(vec![
                    0.1,
                    5e-324,
                    -f64::INFINITY,
                    -f64::NAN,
                    f64::from_bits(0x7ff0_0000_0000_0001),
                    1.0 / 3.0,
                    -1e300,
                    123456789012345680.0,
                ]),
            )
            .unwrap(),
        )
        .unwrap(),
    );
    outs.push(
        g.constant(Literal::new([4], Data::I64(vec![i64::MIN, -1, 0, i64::MAX])).unwrap())
            .unwrap(),
    );
    outs.push(
        g.constant(Literal::new([1, 3], Data::Bool(vec![true, false, true])).unwrap())
            .unwrap(),
    );
    outs.push(g.constant(Literal::scalar_f32(2.5)).unwrap());
    outs.push(
        g.constant(Literal::new([0, 3], Data::F32(vec![])).unwrap())
            .unwrap(),
    );
    for v in [
        f64::NAN,
        f64::NEG_INFINITY,
        f64::INFINITY,
        5e-324,
        -0.0,
        1e300,
        f64::from_bits(0xfff8_0000_0000_0002),
        0.30000000000000004,
    ] {
        outs.push(g.full(v, f32t(&[2, 3])).unwrap());
    }
    outs.push(g.full(-7.0, t(DType::I64, &[])).unwrap());
    outs.push(g.full(1.0, t(DType::Bool, &[2, 0])).unwrap());

    // gradient tags, with and without locations
    g.set_origin(loc("src/model.rs", 30, 2), Some(prod));
    let dy = g.full_like(1.0, prod).unwrap();
    let dx = g.mul(dy, y).unwrap();
    g.set_origin(None, Some(prod));
    let dyy = g.mul(dy, x).unwrap();
    g.set_origin(None, None);
    outs.push(dx);
    outs.push(dyy);
    // a gradient tag pointing forward in the printed order
    let early = g.full(0.0, f32t(&[2, 3])).unwrap();
    let late = g.unary(UnaryOp::Exp, dx).unwrap();
    g.node_mut(early).grad_of = Some(late);
    outs.push(early);

    // an index order that is not topological, and a hole in the node indices
    let n1 = g.unary(UnaryOp::Exp, x).unwrap();
    let n2 = g.unary(UnaryOp::Neg, n1).unwrap();
    let n3 = g.unary(UnaryOp::Tanh, x).unwrap();
    g.replace_all_uses(n1, n3);
    g.remove_node(n1);
    outs.push(n2);

    g.set_output("loss", dx);
    g.set_output("ünï \"out\"", n2);
    g.set_output("", late);
    g.set_output("x_again", x);
    for (i, o) in outs.into_iter().enumerate() {
        g.set_output(format!("o{i}"), o);
    }
    g
}

fn assert_round_trips(g: &Graph) -> String {
    verify(g).unwrap();
    let text = print(g);
    let g2 = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        structurally_equal(g, &g2),
        "not structurally equal:\n{text}"
    );
    assert!(structurally_equal(&g2, g));
    assert_eq!(print(&g2), text);
    assert_eq!(format!("{g}"), text);
    text
}

#[test]
fn text_round_trips_every_op() {
    let g = all_ops_graph();
    let text = assert_round_trips(&g);
    for name in OP_NAMES {
        assert!(
            text.contains(&format!(" = {name} ")),
            "op `{name}` not covered:\n{text}"
        );
    }
    for needle in [
        "full nan\n",
        "full -inf\n",
        "full inf\n",
        "full 5e-324\n",
        "full -0.0\n",
        "full nan(0xfff8000000000002)",
        "value=nan",
        "value=-0.0",
        "value=-inf",
        "nan(0x7fc00001)",
        "nan(0xffc00000)",
        "1e-45",
        "3.4028235e38",
        "16777216.0",
        "-9223372036854775808",
        "[true, false, true]",
        "= const [2.5]",
        "= const []",
        "@ \"src/dir \\\"q\\\"/ünïcødé ∂ 🦀.rs\":12:9",
        "input \"y \\\"quoted\\\" \\\\ back; semi\\ttab\\nnewline é\"",
        "ranges=[0:2:1,1:3:2]",
        "stride=[1,2,1] padding=[0,1,0] dilation=[1,1,2] groups=2 output_padding=[0,0,0]",
        "kernel=[2,2,2]",
        "output \"\" = %",
        "dtype=bool",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // the inputs and params come first, in map order
    let first: Vec<&str> = text.lines().skip(1).take(4).collect();
    assert!(
        first[0].ends_with("= input \"x\" @ \"src/model.rs\":1:1"),
        "{first:?}"
    );
    assert!(first[2].contains("input \"labels\""), "{first:?}");
    assert!(text.contains("grad(%"));
}

#[test]
fn text_structural_equality_sees_differences() {
    let g = all_ops_graph();
    let text = print(&g);
    for (from, to) in [
        ("full nan\n", "full nan(0x7ff8000000000003)\n"),
        ("full 5e-324\n", "full 1e-323\n"),
        ("axes=[0,1]", "axes=[0]"),
        (":12:9", ":12:8"),
        ("\"x\" @ \"src/model.rs\":1:1", "\"x\""),
    ] {
        let changed = text.replacen(from, to, 1);
        assert_ne!(changed, text, "{from}");
        // Some edits make types mismatch; those that parse must differ structurally.
        if let Ok(g2) = parse(&changed) {
            assert!(!structurally_equal(&g, &g2), "{from} -> {to}");
        }
    }
    let mut g2 = g.clone();
    let out = *g2.outputs.get("loss").unwrap();
    g2.outputs.shift_remove("loss");
    g2.set_output("loss", out);
    assert!(!structurally_equal(&g, &g2), "output order matters");
    let mut g3 = g.clone();
    let id = g3.node_ids()[7];
    g3.node_mut(id).grad_of = None;
    g3.node_mut(id).loc = None;
    assert!(!structurally_equal(&g, &g3));
}

#[test]
fn text_round_trips_small_graphs() {
    assert_round_trips(&Graph::new());
    assert_eq!(print(&Graph::new()), "graph {\n}\n");
    let mut g = Graph::new();
    let a = g.param("b", f32t(&[])).unwrap();
    let b = g.input("a", f32t(&[])).unwrap();
    let c = g.add(a, b).unwrap();
    g.set_output("c", c);
    let text = assert_round_trips(&g);
    assert_eq!(
        text,
        "graph {\n  %0: f32[] = input \"a\"\n  %1: f32[] = param \"b\"\n  %2: f32[] = add %1, %0\n  output \"c\" = %2\n}\n"
    );
}

#[test]
fn text_parser_accepts_comments_names_and_any_attribute_order() {
    let src = "; leading comment\n\
               \n\
               graph {   ; trailing comment\n\
               \t%x: f32[2,2] = input \"x\" ; name with a string containing ;\n\
               %w.0 : f32[2,2]=param \"w;\" @\"a;b.rs\":3:4\n\
               %y: f32[3,6] = pad %x hi=[0,2] value=0.5 lo=[1,2]\n\
               output \"y\" = %y\n\
               ; comment before the end\n\
               }\n\
               ; after\n";
    let g = parse(src).unwrap();
    assert_eq!(g.len(), 3);
    let w = g.params["w;"];
    assert_eq!(g.node(w).loc.as_ref().unwrap().file, "a;b.rs");
    assert_eq!(
        print(&g),
        "graph {\n  %0: f32[2,2] = input \"x\"\n  %1: f32[2,2] = param \"w;\" @ \"a;b.rs\":3:4\n  %2: f32[3,6] = pad %0 lo=[1,2] hi=[0,2] value=0.5\n  output \"y\" = %2\n}\n"
    );
}

/// Parses `src`, expecting an error at `line` whose message contains `msg`; returns the
/// column.
fn expect_err(src: &str, line: usize, msg: &str) -> usize {
    match parse(src) {
        Ok(g) => panic!("expected an error, parsed:\n{}", print(&g)),
        Err(IrError::Parse {
            line: l,
            col,
            msg: m,
        }) => {
            assert_eq!(l, line, "wrong line for {m:?}\n{src}");
            assert!(m.contains(msg), "{m:?} does not contain {msg:?}");
            assert!(col >= 1);
            col
        }
        Err(e) => panic!("not a parse error: {e}"),
    }
}

const HEAD: &str = "graph {\n  %0: f32[2] = input \"a\"\n  %1: f32[2] = input \"b\"\n";

fn with(body: &str) -> String {
    format!("{HEAD}{body}\n}}\n")
}

#[test]
fn text_parse_errors_have_lines_and_columns() {
    expect_err(
        &with("  %2: f32[2] = frobnicate %0"),
        4,
        "unknown op `frobnicate`",
    );
    let col = expect_err(&with("  %2: f32[2] = exp %7"), 4, "undefined value %7");
    assert_eq!(col, 20);
    let col = expect_err(
        &with("  %2: f32[3] = add %0, %1"),
        4,
        "declared type f32[3] does not match the type f32[2] that `add` gives",
    );
    assert_eq!(col, 7);
    expect_err(
        "graph {\n  %0: f32[2] = input \"a\"\n  %1: f32[3] = input \"b\"\n  %2: f32[2] = add %0, %1\n}\n",
        4,
        "`add`: operands must have one type",
    );
    expect_err(
        &with("  %2: f32[1] = reduce_sum %0 axis=[0]"),
        4,
        "unknown attribute `axis` for `reduce_sum` (it takes axes)",
    );
    expect_err(
        &with("  %2: f32[2] = exp %0 axes=[0]"),
        4,
        "`exp` takes no attributes",
    );
    expect_err(
        &with("  %2: f32[1] = reduce_sum %0"),
        4,
        "`reduce_sum` is missing attribute `axes`",
    );
    expect_err(
        &with("  %2: f32[1] = reduce_sum %0 axes=[0] axes=[0]"),
        4,
        "given twice",
    );
    expect_err(
        &with("  %2: f32[1] = reduce_sum %0 axes=[x]"),
        4,
        "expected `axes` (an unsigned integer), found `x`",
    );
    expect_err(&with("  %2: f32[2] = exp %0 )"), 4, "unexpected `)`");
    expect_err(
        &with("  %2: f32[2] = exp %0, %1"),
        4,
        "`exp` takes 1 operand(s), got 2",
    );
    expect_err(
        &with("  %2: f32[2] = add %0"),
        4,
        "`add` takes 2 operand(s), got 1",
    );
    expect_err(
        &with("  %2: f32[2] = concat axis=0"),
        4,
        "expected an operand of `concat`",
    );
    expect_err(
        &with("  %1: f32[2] = exp %0"),
        4,
        "value %1 is already defined on line 3",
    );
    expect_err(
        &with("  %2: f32[2] = input \"a\""),
        4,
        "already input \"a\"",
    );
    expect_err(&with("  %2: f16[2] = exp %0"), 4, "unknown dtype `f16`");
    expect_err(
        &with("  %2: f32[2] = cast %0 dtype=f16"),
        4,
        "unknown dtype `f16`",
    );
    expect_err(&with("  %2: f32[99999999999] = full 1.0"), 4, "too large");
    expect_err(
        &with("  %2: f32[2147483647,2147483647,2147483647] = full 1.0"),
        4,
        "too many elements",
    );
    expect_err(
        &with("  %2: f32[2] = full 1.0.0"),
        4,
        "invalid number `1.0.0`",
    );
    expect_err(
        &with("  %2: f32[2] = full infinity"),
        4,
        "expected the fill value",
    );
    expect_err(
        &with("  %2: f32[2] = const [1.0]"),
        4,
        "does not fit its type f32[2]",
    );
    expect_err(
        &with("  %2: i64[2] = const [1, 2.5]"),
        4,
        "invalid i64 `2.5`",
    );
    expect_err(&with("  %2: bool[1] = const [1]"), 4, "invalid bool `1`");
    expect_err(
        &with("  %2: f32[1] = const [nan(0x3f800000)]"),
        4,
        "invalid f32",
    );
    expect_err(
        &with("  %2: f32[2] = exp %0 @ \"a.rs\":1"),
        4,
        "expected `:` after the location's line",
    );
    expect_err(
        &with("  %2: f32[2] = exp %0 @ \"a.rs:1:1"),
        4,
        "unterminated string",
    );
    expect_err(
        &with("  %2: f32[2] = exp %0 @ \"a\\q.rs\":1:1"),
        4,
        "unknown escape `\\q`",
    );
    expect_err(
        &with("  %2: f32[2] = exp %0 @ \"a\\u{110000}.rs\":1:1"),
        4,
        "invalid unicode escape",
    );
    expect_err(
        &with("  %2: f32[2] = exp %0 @ \"a.rs\":1:1 grad(%0)"),
        4,
        "comes before the `@` location",
    );
    expect_err(
        &with("  %2: f32[2] = exp %0 grad(%9)"),
        4,
        "undefined value %9",
    );
    expect_err(
        &with("  %2: f32[2] = exp %0 # comment"),
        4,
        "unexpected character `#`",
    );
    expect_err(
        &with("  %2: f32[2] = exp %"),
        4,
        "expected a value name after `%`",
    );
    expect_err(&with("  output \"o\" = %5"), 4, "undefined value %5");
    expect_err(
        &with("  output \"o\" = %0\n  output \"o\" = %1"),
        5,
        "output \"o\" is already defined on line 4",
    );
    expect_err(&with("  add %0, %1"), 4, "expected a node");
    expect_err(
        &with("  %2: f32[4] = conv_transpose %0, %1 stride=[1] padding=[0] dilation=[1] groups=1 output_padding=[0]"),
        4,
        "`conv_transpose`",
    );
    expect_err(&format!("{HEAD}}}\n}}\n"), 5, "after the end of the graph");
    expect_err(&format!("{HEAD}}} x\n"), 4, "after the closing `}`");
    expect_err(HEAD, 4, "missing the closing `}`");
    expect_err("", 1, "expected `graph {`");
    expect_err("; only a comment\n", 2, "expected `graph {`");
    expect_err("graph\n", 1, "expected `{` after `graph`");
    expect_err("grph {\n}\n", 1, "expected `graph {`");
    // forward references are allowed for outputs and gradient tags, not for operands
    expect_err(
        "graph {\n  %0: f32[2] = exp %1\n  %1: f32[2] = input \"a\"\n}\n",
        2,
        "undefined value %1",
    );
    let g = parse("graph {\n  output \"y\" = %1\n  %0: f32[2] = input \"a\" grad(%1)\n  %1: f32[2] = exp %0\n}\n").unwrap();
    assert_eq!(g.outputs["y"], g.node_ids()[1]);
}

#[test]
fn text_error_display_names_line_and_column() {
    let err = parse(&with("  %2: f32[2] = exp %0 grad(%0) grad(%0)")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "IR text, line 4, column 32: the gradient tag is given twice"
    );
}

/// Tiny deterministic PRNG (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Parses `src`; if it parses, the result must print to a fixed point.
fn parse_never_panics(src: &str) {
    if let Ok(g) = parse(src) {
        let text = print(&g);
        let g2 = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(structurally_equal(&g, &g2));
    }
}

#[test]
fn text_parser_survives_truncated_and_mutated_input() {
    let text = print(&all_ops_graph());
    let chars: Vec<char> = text.chars().collect();
    for n in 0..chars.len() {
        let s: String = chars[..n].iter().collect();
        assert!(parse(&s).is_err() || n + 1 >= chars.len());
    }
    let lines: Vec<&str> = text.lines().collect();
    let palette = [
        '%', '[', ']', '"', '\\', '9', '0', 'x', ' ', '\n', ';', '-', '=', ',', ':', '@', '(', ')',
        'e', '{', '}', 'é',
    ];
    let big = [
        "99999999999999999999",
        "2147483647",
        "0",
        "-1",
        "1e999",
        "nan(0x",
        "\"",
        "%0",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let mut c = chars.clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(c.len());
            match rng.below(5) {
                0 => {
                    c.remove(i);
                }
                1 => c.insert(i, palette[rng.below(palette.len())]),
                2 => c[i] = palette[rng.below(palette.len())],
                3 => {
                    let s = big[rng.below(big.len())];
                    c.splice(i..i, s.chars());
                }
                _ => {
                    // replace a run of digits with a big or odd number
                    let j = (i..c.len())
                        .find(|&j| !c[j].is_ascii_digit())
                        .unwrap_or(c.len());
                    let s = big[rng.below(3)];
                    c.splice(i..j, s.chars());
                }
            }
        }
        parse_never_panics(&c.iter().collect::<String>());
    }
    for _ in 0..500 {
        let mut ls = lines.clone();
        let i = rng.below(ls.len());
        let j = rng.below(ls.len());
        match rng.below(3) {
            0 => ls.swap(i, j),
            1 => {
                ls.remove(i);
            }
            _ => ls.insert(i, lines[j]),
        }
        parse_never_panics(&ls.join("\n"));
    }
    for _ in 0..500 {
        let n = rng.below(200);
        let s: String = (0..n)
            .map(|_| {
                if rng.below(4) == 0 {
                    palette[rng.below(palette.len())]
                } else {
                    char::from_u32(rng.below(0x80) as u32).unwrap_or('?')
                }
            })
            .collect();
        parse_never_panics(&s);
        parse_never_panics(&format!("graph {{\n{s}\n}}\n"));
        parse_never_panics(&format!("graph {{\n  %0: f32[2,3] = {s}\n}}\n"));
    }
}

#[test]
fn text_prints_malformed_graphs_without_panicking() {
    let mut g = Graph::new();
    let a = g.input("a", f32t(&[2])).unwrap();
    let b = g.push_node(
        Node {
            op: Op::Binary(BinaryOp::Add),
            ty: f32t(&[3]),
            loc: None,
            grad_of: None,
        },
        &[a],
    );
    g.node_mut(a).ty = f32t(&[5]);
    g.remove_node(b);
    // remove_node drops outputs naming the node; a buggy pass could still leave one dangling.
    g.set_output("b", b);
    g.set_output("gone", b);
    let text = print(&g);
    assert!(text.contains("= input \"a\" ty=f32[2]"), "{text}");
    assert!(text.contains("output \"b\" = %!1"), "{text}");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("declared type f32[5] does not match"), "{err}");
}

// ----- file tests ------------------------------------------------------------------------------

/// Runs every `tests/ir/*.kir` file. A file whose first line is `; error: MESSAGE` must fail
/// to parse with an error whose text contains MESSAGE. Any other file must parse and verify,
/// and print back exactly as written once its leading `;` comment lines are dropped (the
/// files are in canonical form).
#[test]
fn text_file_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ir");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kir"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "too few file tests in {}", dir.display());
    let (mut good, mut bad) = (0, 0);
    for path in files {
        let src = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        if let Some(expected) = src.lines().next().and_then(|l| l.strip_prefix("; error: ")) {
            let err = match parse(&src) {
                Ok(_) => panic!("{name}: parsed, expected error {expected:?}"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains(expected.trim()),
                "{name}: error {err:?} does not contain {expected:?}"
            );
            bad += 1;
        } else {
            let g = parse(&src).unwrap_or_else(|e| panic!("{name}: {e}"));
            verify(&g).unwrap();
            let canonical: String = src
                .lines()
                .skip_while(|l| l.starts_with(';'))
                .map(|l| format!("{l}\n"))
                .collect();
            let printed = print(&g);
            assert_eq!(printed, canonical, "{name} is not in canonical form");
            let g2 = parse(&printed).unwrap();
            assert!(structurally_equal(&g, &g2), "{name}");
            good += 1;
        }
    }
    assert!(good >= 3 && bad >= 2, "{good} good and {bad} failing files");
}

#[test]
fn text_parser_rejects_arithmetic_extremes_without_panicking() {
    // `infer` computes `kernel - 1` for transposed convolutions: a zero-size kernel must be
    // an error, not an underflow.
    expect_err(
        "graph {\n  %0: f32[1,4,5,5] = input \"x\"\n  %1: f32[4,3,0,3] = param \"w\"\n  %2: f32[1,3,5,5] = conv_transpose %0, %1 stride=[1,1] padding=[0,0] dilation=[1,1] groups=1 output_padding=[0,0]\n}\n",
        4,
        "zero-size kernel",
    );
    expect_err(
        "graph {\n  %0: f32[1,4,5,5] = input \"x\"\n  %1: f32[3,4,0,3] = param \"w\"\n  %2: f32[1,3,5,5] = conv %0, %1 stride=[1,1] padding=[0,0] dilation=[1,1] groups=1 output_padding=[0,0]\n}\n",
        4,
        "zero-size kernel",
    );
    let m = "2147483647";
    let g = parse(&format!(
        "graph {{\n  %0: f32[{m}] = input \"x\"\n  %1: f32[6442450941] = pad %0 lo=[{m}] hi=[{m}] value=0.0\n}}\n"
    ));
    assert!(g.is_err(), "6442450941 exceeds the integer limit");
    let g = parse(&format!(
        "graph {{\n  %0: f32[{m}] = input \"x\"\n  %1: f32[{m}] = pad %0 lo=[0] hi=[0] value=0.0\n  %2: f32[1,{m}] = reshape %1 shape=[1,{m}]\n}}\n"
    ))
    .unwrap();
    assert_eq!(g.len(), 3);
    expect_err(
        &format!("graph {{\n  %0: f32[1] = input \"x\"\n  %1: f32[1] = reshape %0 shape=[{m},{m},{m}]\n}}\n"),
        3,
        "too many elements",
    );
    expect_err(
        &format!("graph {{\n  %0: f32[3] = input \"x\"\n  %1: f32[3] = conv %0, %0 stride=[{m}] padding=[{m}] dilation=[{m}] groups={m} output_padding=[{m}]\n}}\n"),
        3,
        "`conv`",
    );
}

/// The examples in `docs/ir.md` stay accurate: every `text` block that holds a graph parses
/// and is canonical, and the `dot` block is the export of the graph block before it.
#[test]
fn text_docs_examples_are_accurate() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ir.md"))
        .unwrap();
    let mut last_graph = None;
    let (mut graphs, mut dots) = (0, 0);
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let lang_end = after.find('\n').unwrap();
        let lang = &after[..lang_end];
        let body_and_more = &after[lang_end + 1..];
        let end = body_and_more.find("```").unwrap();
        let body = &body_and_more[..end];
        rest = &body_and_more[end + 3..];
        if lang == "text" && body.contains("graph {") {
            let g = parse(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
            let canonical: String = body
                .lines()
                .skip_while(|l| l.starts_with(';'))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(print(&g), canonical);
            last_graph = Some(g);
            graphs += 1;
        } else if lang == "dot" {
            let g = last_graph.as_ref().expect("a dot block follows a graph");
            assert_eq!(kiln_ir::dot::to_dot(g), body);
            dots += 1;
        }
    }
    assert!(
        graphs >= 2 && dots == 1,
        "{graphs} graphs, {dots} dot blocks"
    );
}
