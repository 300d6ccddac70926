//! Tests of the optimisation passes (`kiln_ir::passes`).
//!
//! 1. File tests: every `tests/passes/*.kir` holds a graph, the passes to run on it and the
//!    expected result (see [`file_tests`]); the input and output are also run on random values
//!    and must agree bit for bit.
//! 2. Differential tests on hundreds of seeded random graphs using every op (shapes with 1s
//!    and odd sizes, constants, `full`s, repeated subexpressions and near-duplicates that
//!    differ in one attribute, chains of movement ops, dead code, special values such as
//!    `-0.0`, infinities and NaN): the interpreter must give the same bits before and after
//!    [`optimize`] (a NaN may change payload). Variants: every node an output (nothing dead,
//!    so every rewrite is observed), `no_signed_zeros`, the backend pipeline, and exhaustive
//!    1-d slices of pads and of slices.
//! 3. Backward graphs (autodiff of random graphs, an MLP and a small conv net) shrink under
//!    the passes and still evaluate the same.
//! 4. Unit tests of the pass manager and of the rules' limits (what must *not* be folded).

use kiln_ir::autodiff::grad_of;
use kiln_ir::interp::run;
use kiln_ir::passes::{cse, dce, optimize, strip_detach, Pass, PassOptions};
use kiln_ir::text::{parse, print};
use kiln_ir::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

// ----- seeded random numbers -------------------------------------------------------------------

/// SplitMix64: tiny, seedable and good enough for test data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n == 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

// ----- values ----------------------------------------------------------------------------------

/// A random element for `dtype`: mostly small numbers, sometimes the special values that
/// tell exact rewrites from inexact ones (signed zeros, infinities, NaN, integer extremes).
fn random_element(rng: &mut Rng, dtype: DType, special: bool) -> f64 {
    if special && rng.chance(0.12) {
        return match dtype {
            DType::F32 | DType::F64 => rng.pick(&[
                0.0,
                -0.0,
                0.0,
                -0.0,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NAN,
            ]),
            DType::I64 => rng.pick(&[0.0, -1.0, 4.0e18, -9.3e18]),
            DType::Bool => 0.0,
        };
    }
    match dtype {
        DType::F32 | DType::F64 => {
            // Small integers and halves are common, so ties of max/min/compares happen.
            if rng.chance(0.3) {
                (rng.below(9) as f64 - 4.0) / 2.0
            } else {
                (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 6.0 - 3.0
            }
        }
        DType::I64 => rng.below(11) as f64 - 5.0,
        DType::Bool => rng.below(2) as f64,
    }
}

fn random_literal(rng: &mut Rng, ty: &TensorType, special: bool) -> Literal {
    let n = ty.numel();
    let data = match ty.dtype {
        DType::F32 => Data::F32(
            (0..n)
                .map(|_| random_element(rng, ty.dtype, special) as f32)
                .collect(),
        ),
        DType::F64 => Data::F64(
            (0..n)
                .map(|_| random_element(rng, ty.dtype, special))
                .collect(),
        ),
        DType::I64 => Data::I64(
            (0..n)
                .map(|_| {
                    let v = random_element(rng, ty.dtype, special);
                    if v < -9.0e18 {
                        i64::MIN
                    } else if v > 1.0e18 {
                        i64::MAX
                    } else {
                        v as i64
                    }
                })
                .collect(),
        ),
        DType::Bool => Data::Bool((0..n).map(|_| rng.below(2) == 1).collect()),
    };
    Literal::new(ty.shape.clone(), data).unwrap()
}

/// Random values for every input and param of `g`.
fn random_bindings(rng: &mut Rng, g: &Graph, special: bool) -> HashMap<String, Literal> {
    g.inputs
        .iter()
        .chain(g.params.iter())
        .map(|(name, &id)| (name.clone(), random_literal(rng, g.ty(id), special)))
        .collect()
}

/// Element `i` as bits, with every NaN the same (a NaN's payload is not part of the
/// semantics the passes preserve).
fn canonical_bits(d: &Data, i: usize) -> u64 {
    match d {
        Data::F32(v) if v[i].is_nan() => u64::MAX,
        Data::F64(v) if v[i].is_nan() => u64::MAX,
        Data::F32(v) => u64::from(v[i].to_bits()),
        Data::F64(v) => v[i].to_bits(),
        Data::I64(v) => v[i] as u64,
        Data::Bool(v) => u64::from(v[i]),
    }
}

/// Bit-exact comparison (up to NaN payloads), or with `loose`, IEEE equality (`-0.0 == 0.0`)
/// or both NaN.
fn same_values(a: &Literal, b: &Literal, loose: bool) -> Result<(), String> {
    if a.ty() != b.ty() {
        return Err(format!("type {} vs {}", a.ty(), b.ty()));
    }
    for i in 0..a.numel() {
        let exact = canonical_bits(&a.data, i) == canonical_bits(&b.data, i);
        let ok = exact || (loose && a.data.get_f64(i) == b.data.get_f64(i));
        if !ok {
            return Err(format!(
                "element {i}: {} vs {}",
                a.data.get_f64(i),
                b.data.get_f64(i)
            ));
        }
    }
    Ok(())
}

/// Runs `before` and `after` on `trials` random bindings and compares every output.
fn assert_same_semantics(
    before: &Graph,
    after: &Graph,
    rng: &mut Rng,
    trials: usize,
    loose: bool,
    what: &str,
) {
    assert_eq!(
        before.outputs.keys().collect::<Vec<_>>(),
        after.outputs.keys().collect::<Vec<_>>(),
        "{what}: outputs changed"
    );
    for trial in 0..trials {
        let binds = random_bindings(rng, before, !loose);
        let r0 = run(before, &binds).unwrap_or_else(|e| panic!("{what}: before: {e}\n{before}"));
        let r1 = run(after, &binds).unwrap_or_else(|e| panic!("{what}: after: {e}\n{after}"));
        for ((name, v0), v1) in r0.iter().zip(r1.values()) {
            if let Err(e) = same_values(v0, v1, loose) {
                panic!(
                    "{what}, trial {trial}: output `{name}` differs: {e}\nbefore:\n{before}\nafter:\n{after}\nbindings: {binds:?}"
                );
            }
        }
    }
}

// ----- file tests ------------------------------------------------------------------------------

/// The pipeline named on a file's `; passes:` line: pass names (`fold simplify cse dce
/// strip_detach`), or `default` for the default pipeline, plus options `nsz` and
/// `max_const=N`.
fn options_from(header: &str, file: &str) -> PassOptions {
    let mut opts = PassOptions {
        passes: vec![],
        ..PassOptions::default()
    };
    for word in header.split_whitespace() {
        match word {
            "default" => opts.passes.extend(PassOptions::default().passes),
            "fold" => opts.passes.push(Pass::Fold),
            "simplify" => opts.passes.push(Pass::Simplify),
            "cse" => opts.passes.push(Pass::Cse),
            "dce" => opts.passes.push(Pass::Dce),
            "strip_detach" => opts.passes.push(Pass::StripDetach),
            "nsz" => opts.no_signed_zeros = true,
            w if w.starts_with("max_const=") => {
                opts.max_const_elements = w["max_const=".len()..].parse().unwrap()
            }
            w => panic!("{file}: unknown word `{w}` on the passes line"),
        }
    }
    assert!(!opts.passes.is_empty(), "{file}: no passes named");
    opts
}

/// Runs every `tests/passes/*.kir` file, in the manner of Cranelift's filetests:
///
/// ```text
/// ; passes: simplify dce
/// ; what the test is about (any number of comment lines)
/// graph { ... the input ... }
/// ; expect:
/// graph { ... the result, in canonical form ... }
/// ```
///
/// The named passes run to a fixed point (as `optimize` runs them) and the result must print
/// exactly as the expected graph. Input and result must also compute the same bits on random
/// values (loosely, `-0.0 == 0.0`, with `nsz`). With `KILN_BLESS=1` the expected graphs are
/// rewritten from the actual results instead (review the diff!).
#[test]
fn file_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/passes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kir"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "too few file tests in {}", dir.display());
    let bless = std::env::var("KILN_BLESS").is_ok_and(|v| v == "1");
    let mut rng = Rng(7);
    let mut failures = Vec::new();
    for path in &files {
        let src = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let header = src
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("; passes:"))
            .unwrap_or_else(|| panic!("{name}: the first line must be `; passes: ...`"));
        let opts = options_from(header, &name);
        let (input, expected) = src
            .split_once("; expect:\n")
            .unwrap_or_else(|| panic!("{name}: no `; expect:` line"));
        let before = parse(input).unwrap_or_else(|e| panic!("{name}: input: {e}"));
        let mut after = before.clone();
        let report = optimize(&mut after, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.converged, "{name}: did not converge");
        let actual = print(&after);
        if bless {
            std::fs::write(path, format!("{input}; expect:\n{actual}")).unwrap();
        } else {
            let want = parse(expected).unwrap_or_else(|e| panic!("{name}: expected: {e}"));
            assert_eq!(
                print(&want),
                expected,
                "{name}: the expected graph is not canonical"
            );
            if actual != expected {
                failures.push(format!(
                    "{name}:\n--- expected\n{expected}--- actual\n{actual}"
                ));
            }
        }
        assert_same_semantics(&before, &after, &mut rng, 8, opts.no_signed_zeros, &name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ----- random graphs ---------------------------------------------------------------------------

/// Builds random well-typed graphs from every op. Each step proposes an op on operands drawn
/// from the nodes made so far (recent ones more often, so chains like `reshape(reshape(x))`
/// form); `Graph::push` rejects ill-typed proposals, which are skipped.
struct Gen<'r> {
    rng: &'r mut Rng,
    g: Graph,
    pool: Vec<NodeId>,
    /// Exclude ops through which a `-0.0`/`0.0` difference becomes a difference of value
    /// (`recip`, `div`, `pow`), for the `no_signed_zeros` test.
    sign_blind: bool,
    /// Only float values (for autodiff, so every node can carry a gradient).
    floats_only: bool,
    inputs: usize,
    /// Probability of re-making a node after each step (exactly, or with one attribute
    /// changed).
    dup_rate: f64,
}

const SIZES: [usize; 7] = [1, 1, 2, 3, 4, 5, 7];
const FILL: [f64; 10] = [0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 3.0, 0.0, 1.0, -2.5];

impl Gen<'_> {
    fn shape(&mut self) -> Vec<usize> {
        let rank = self.rng.below(4);
        (0..rank).map(|_| self.rng.pick(&SIZES)).collect()
    }

    fn dtype(&mut self) -> DType {
        if self.floats_only {
            return if self.rng.chance(0.5) {
                DType::F32
            } else {
                DType::F64
            };
        }
        self.rng.pick(&[
            DType::F32,
            DType::F32,
            DType::F64,
            DType::F64,
            DType::I64,
            DType::Bool,
        ])
    }

    fn push(&mut self, op: Op, operands: &[NodeId]) -> Option<NodeId> {
        let id = self.g.push(op, operands).ok()?;
        self.pool.push(id);
        Some(id)
    }

    /// An operand: usually a recent node.
    fn any(&mut self) -> NodeId {
        let n = self.pool.len();
        if self.rng.chance(0.5) {
            self.pool[n - 1 - self.rng.below(n.min(4))]
        } else {
            self.pool[self.rng.below(n)]
        }
    }

    fn any_where(&mut self, f: impl Fn(&TensorType) -> bool) -> Option<NodeId> {
        let c: Vec<NodeId> = self
            .pool
            .iter()
            .copied()
            .filter(|&n| f(self.g.ty(n)))
            .collect();
        if c.is_empty() {
            None
        } else if self.rng.chance(0.5) {
            Some(c[c.len() - 1 - self.rng.below(c.len().min(3))])
        } else {
            Some(self.rng.pick(&c))
        }
    }

    /// A leaf of type `ty`: an input, a param (floats), a `full` or a `const` (sometimes
    /// uniform, so that folding turns it into a `full`).
    fn leaf(&mut self, ty: TensorType) -> NodeId {
        let r = self.rng.below(10);
        let id = if r < 2 {
            let name = format!("in{}", self.inputs);
            self.inputs += 1;
            self.g.input(name, ty)
        } else if r < 4 && ty.dtype.is_float() {
            let name = format!("p{}", self.inputs);
            self.inputs += 1;
            self.g.param(name, ty)
        } else if r < 7 {
            let v = self.rng.pick(&FILL);
            self.g.full(v, ty)
        } else if r < 8 {
            let v = self.rng.pick(&FILL);
            self.g.constant(Literal::splat(&ty, v))
        } else {
            let lit = random_literal(self.rng, &ty, false);
            self.g.constant(lit)
        };
        let id = id.unwrap();
        self.pool.push(id);
        id
    }

    /// A node of exactly type `ty`: one from the pool, or a new leaf.
    fn like(&mut self, ty: &TensorType) -> NodeId {
        if self.rng.chance(0.5) {
            if let Some(n) = self.any_where(|t| t == ty) {
                return n;
            }
        }
        self.leaf(ty.clone())
    }

    fn numeric(&mut self) -> NodeId {
        self.any_where(|t| t.dtype.is_numeric())
            .unwrap_or_else(|| self.leaf(TensorType::new(DType::F32, [3])))
    }

    fn float(&mut self) -> NodeId {
        self.any_where(|t| t.dtype.is_float())
            .unwrap_or_else(|| self.leaf(TensorType::new(DType::F64, [2, 3])))
    }

    /// One random step; most steps add a node.
    fn step(&mut self) {
        let choice = self.rng.below(26);
        match choice {
            0..=2 => {
                let a = self.float();
                let mut us = vec![
                    UnaryOp::Neg,
                    UnaryOp::Exp,
                    UnaryOp::Log,
                    UnaryOp::Sqrt,
                    UnaryOp::Abs,
                    UnaryOp::Tanh,
                    UnaryOp::Sigmoid,
                    UnaryOp::Neg,
                ];
                if !self.sign_blind {
                    us.push(UnaryOp::Recip);
                }
                let u = self.rng.pick(&us);
                self.push(Op::Unary(u), &[a]);
            }
            3 => {
                let a = self.numeric();
                let u = self.rng.pick(&[UnaryOp::Neg, UnaryOp::Abs]);
                self.push(Op::Unary(u), &[a]);
            }
            4..=8 => {
                let a = self.numeric();
                let ty = self.g.ty(a).clone();
                let b = if self.rng.chance(0.15) {
                    a
                } else {
                    self.like(&ty)
                };
                let mut bs = vec![
                    BinaryOp::Add,
                    BinaryOp::Sub,
                    BinaryOp::Mul,
                    BinaryOp::Mul,
                    BinaryOp::Max,
                    BinaryOp::Min,
                ];
                if !self.sign_blind && ty.dtype.is_float() {
                    bs.extend([BinaryOp::Div, BinaryOp::Div, BinaryOp::Pow]);
                }
                let op = self.rng.pick(&bs);
                let (a, b) = if self.rng.chance(0.5) { (a, b) } else { (b, a) };
                self.push(Op::Binary(op), &[a, b]);
            }
            9 => {
                let a = self.any();
                let ty = self.g.ty(a).clone();
                let b = if self.rng.chance(0.15) {
                    a
                } else {
                    self.like(&ty)
                };
                let c = self.rng.pick(&[
                    CmpOp::Eq,
                    CmpOp::Ne,
                    CmpOp::Lt,
                    CmpOp::Le,
                    CmpOp::Gt,
                    CmpOp::Ge,
                ]);
                self.push(Op::Compare(c), &[a, b]);
            }
            10 | 11 => {
                let a = self.any();
                let ty = self.g.ty(a).clone();
                let b = if self.rng.chance(0.15) {
                    a
                } else {
                    self.like(&ty)
                };
                let cty = TensorType::new(DType::Bool, ty.shape.clone());
                let c = if self.floats_only {
                    let z = self.like(&ty);
                    match self.g.compare(CmpOp::Gt, a, z) {
                        Ok(c) => c,
                        Err(_) => return,
                    }
                } else {
                    self.like(&cty)
                };
                self.push(Op::Where, &[c, a, b]);
            }
            12 => {
                let a = self.any();
                let d = self.dtype();
                self.push(Op::Cast(d), &[a]);
            }
            13 => {
                let a = self.any();
                self.push(Op::Detach, &[a]);
            }
            14 | 15 => {
                let a = self.numeric();
                let rank = self.g.ty(a).rank();
                let axes: Vec<usize> = (0..rank).filter(|_| self.rng.chance(0.5)).collect();
                let op = if self.rng.chance(0.6) {
                    ReduceOp::Sum
                } else {
                    ReduceOp::Max
                };
                self.push(Op::Reduce { op, axes }, &[a]);
            }
            16 | 17 => {
                let a = self.any();
                let kind = self.rng.below(5);
                self.movement(a, kind);
            }
            18..=21 => {
                // A chain: the same kind of movement op again on a recent movement op, so
                // that `slice(slice(x))` and the like, with steps and offsets, occur.
                let recent = self.pool.iter().rev().take(6).copied().find(|&n| {
                    matches!(
                        self.g.node(n).op,
                        Op::Reshape(_)
                            | Op::Permute(_)
                            | Op::Expand(_)
                            | Op::Slice(_)
                            | Op::Pad { .. }
                            | Op::Cast(_)
                    )
                });
                let (a, kind) = match recent.map(|n| (n, &self.g.node(n).op)) {
                    Some((n, Op::Reshape(_))) => (n, 0),
                    Some((n, Op::Permute(_))) => (n, 1),
                    Some((n, Op::Expand(_))) => (n, 2),
                    Some((n, Op::Slice(_))) => (n, 3),
                    Some((n, Op::Cast(_))) => (n, 5),
                    Some((n, _)) => (n, 4),
                    None => {
                        let a = self.any();
                        (a, self.rng.below(5))
                    }
                };
                self.movement(a, kind);
            }
            22 => {
                let a = self
                    .any_where(|t| t.rank() > 0)
                    .unwrap_or_else(|| self.leaf(TensorType::new(DType::F32, [2])));
                let ty = self.g.ty(a).clone();
                let axis = self.rng.below(ty.rank());
                let n = 1 + self.rng.below(3);
                let mut parts = vec![a];
                for _ in 1..n {
                    let mut s = ty.shape.clone();
                    s[axis] = self.rng.pick(&[0, 1, 2, 3]);
                    let t = TensorType::new(ty.dtype, s);
                    let p = if t == ty && self.rng.chance(0.5) {
                        a
                    } else {
                        self.like(&t)
                    };
                    parts.push(p);
                }
                self.push(Op::Concat(axis), &parts);
            }
            23 => {
                let a = self
                    .any_where(|t| t.dtype.is_float() && t.rank() >= 2)
                    .unwrap_or_else(|| {
                        let s = vec![self.rng.pick(&SIZES), self.rng.pick(&SIZES)];
                        self.leaf(TensorType::new(DType::F64, s))
                    });
                let ty = self.g.ty(a).clone();
                let r = ty.rank();
                let b = if self.rng.chance(0.4) {
                    match self.g.transpose_last(a) {
                        Ok(t) => t,
                        Err(_) => return,
                    }
                } else {
                    let mut s = ty.shape.clone();
                    s[r - 2] = ty.shape[r - 1];
                    s[r - 1] = self.rng.pick(&SIZES);
                    self.like(&TensorType::new(ty.dtype, s))
                };
                self.push(Op::MatMul, &[a, b]);
            }
            24 | 25 => self.conv_family(),
            _ => unreachable!(),
        }
        // Repeated subexpressions: re-make a recent node from the same operands.
        if self.rng.chance(self.dup_rate) {
            let n = self.any();
            let node = self.g.node(n).clone();
            if !node.op.is_leaf() || matches!(node.op, Op::Full { .. } | Op::Const(_)) {
                let mut ops = self.g.operands(n);
                // Swapped operands: equal for add, mul, eq, ne; not for max, min, sub, ...
                if ops.len() == 2 && self.rng.chance(0.5) {
                    ops.swap(0, 1);
                }
                let op = if self.rng.chance(0.4) {
                    let shape = ops.first().map_or(vec![], |&o| self.g.shape(o).to_vec());
                    self.perturb(&node.op, &shape)
                } else {
                    node.op
                };
                self.push(op, &ops);
            }
        }
    }

    /// `op` with one attribute changed: a near-duplicate that CSE must not merge (when its
    /// type is still the same, only the attributes tell the two apart).
    fn perturb(&mut self, op: &Op, operand_shape: &[usize]) -> Op {
        let mut op = op.clone();
        match &mut op {
            Op::Full { value, .. } => *value = self.rng.pick(&FILL),
            Op::Const(lit) => {
                let ty = lit.ty();
                *lit = Arc::new(random_literal(self.rng, &ty, true));
            }
            Op::Unary(u) => *u = self.rng.pick(&[UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Exp]),
            Op::Binary(b) => {
                *b = self
                    .rng
                    .pick(&[BinaryOp::Add, BinaryOp::Sub, BinaryOp::Max])
            }
            Op::Compare(c) => *c = self.rng.pick(&[CmpOp::Lt, CmpOp::Le, CmpOp::Ne]),
            Op::Cast(d) => *d = self.rng.pick(&DType::ALL),
            Op::Reduce { op, axes } => {
                if self.rng.chance(0.5) {
                    *op = if *op == ReduceOp::Sum {
                        ReduceOp::Max
                    } else {
                        ReduceOp::Sum
                    };
                } else if !axes.is_empty() {
                    axes.pop();
                }
            }
            Op::Permute(p) if p.len() >= 2 => p.swap(0, 1),
            Op::Slice(axes) => {
                // Same length, other elements (so that the type stays the same): the range
                // shifted, or a longer step, where that fits in the operand.
                let fits = |a: &SliceAxis, d: usize| a.end <= d && a.start <= a.end;
                for (a, &d) in axes.iter_mut().zip(operand_shape) {
                    let len = a.len();
                    let mut options = vec![];
                    if len >= 1 && a.start > 0 {
                        options.push(SliceAxis {
                            start: a.start - 1,
                            end: a.end - 1,
                            step: a.step,
                        });
                    }
                    if len >= 1 && a.end < d {
                        options.push(SliceAxis {
                            start: a.start + 1,
                            end: a.end + 1,
                            step: a.step,
                        });
                    }
                    if len >= 2 {
                        let step = a.step + 1;
                        let b = SliceAxis {
                            start: a.start,
                            end: a.start + (len - 1) * step + 1,
                            step,
                        };
                        if fits(&b, d) {
                            options.push(b);
                        }
                    }
                    if !options.is_empty() {
                        *a = self.rng.pick(&options);
                        break;
                    }
                }
            }
            Op::Pad { value, lo, .. } => {
                if self.rng.chance(0.7) {
                    *value = self.rng.pick(&FILL);
                } else if let Some(l) = lo.first_mut() {
                    *l += 1;
                }
            }
            Op::Conv(p) | Op::ConvTranspose(p) | Op::ConvWeight { params: p, .. } => {
                match self.rng.below(3) {
                    0 => p.stride[0] += 1,
                    1 => p.padding[0] += 1,
                    _ => p.dilation[0] += 1,
                }
            }
            _ => {}
        }
        op
    }

    /// A random movement op of `kind` (reshape, permute, expand, slice, pad, and 5: a cast)
    /// on `a`.
    fn movement(&mut self, a: NodeId, kind: usize) {
        let shape = self.g.shape(a).to_vec();
        let rank = shape.len();
        let op = match kind {
            0 => Op::Reshape(reshape_target(self.rng, &shape)),
            1 => {
                let mut perm: Vec<usize> = (0..rank).collect();
                for i in (1..rank).rev() {
                    let j = self.rng.below(i + 1);
                    perm.swap(i, j);
                }
                Op::Permute(perm)
            }
            2 => {
                let a = if shape.contains(&1) {
                    a
                } else {
                    match self.any_where(|t| t.shape.contains(&1)) {
                        Some(b) => b,
                        None => return,
                    }
                };
                let s = self
                    .g
                    .shape(a)
                    .to_vec()
                    .into_iter()
                    .map(|d| {
                        if d == 1 && self.rng.chance(0.6) {
                            self.rng.pick(&[2, 3])
                        } else {
                            d
                        }
                    })
                    .collect();
                self.push(Op::Expand(s), &[a]);
                return;
            }
            3 => Op::Slice(
                shape
                    .iter()
                    .map(|&d| {
                        if self.rng.chance(0.3) {
                            return SliceAxis::full(d);
                        }
                        // Long strided ranges half the time, so that composed slices
                        // have several elements and steps on both sides.
                        let (start, end) = if self.rng.chance(0.5) {
                            (self.rng.below(2).min(d), d)
                        } else {
                            let start = self.rng.below(d + 1);
                            (start, start + self.rng.below(d - start + 1))
                        };
                        SliceAxis {
                            start,
                            end,
                            step: 1 + self.rng.below(3),
                        }
                    })
                    .collect(),
            ),
            5 => Op::Cast(self.rng.pick(&DType::ALL)),
            _ => Op::Pad {
                lo: (0..rank)
                    .map(|_| self.rng.below(3).saturating_sub(1))
                    .collect(),
                hi: (0..rank)
                    .map(|_| self.rng.below(3).saturating_sub(1))
                    .collect(),
                value: self.rng.pick(&FILL),
            },
        };
        self.push(op, &[a]);
    }

    /// A `conv`, `conv_transpose` or `conv_weight` on a float node of rank 3 or 4 (taken as
    /// `[N, C, spatial...]`), with a fresh weight and random stride, padding, dilation,
    /// groups and output padding.
    fn conv_family(&mut self) {
        let x = match self.any_where(|t| t.dtype.is_float() && (t.rank() == 3 || t.rank() == 4)) {
            Some(x) if self.rng.chance(0.7) => x,
            _ => {
                let mut s = vec![self.rng.pick(&[1, 2]), self.rng.pick(&[1, 2, 4])];
                let nd = 1 + self.rng.below(2);
                for _ in 0..nd {
                    s.push(self.rng.pick(&[3, 4, 5]));
                }
                let d = self.dtype_float();
                self.leaf(TensorType::new(d, s))
            }
        };
        let ty = self.g.ty(x).clone();
        let nd = ty.rank() - 2;
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
        let kernel: Vec<usize> = (0..nd).map(|_| 1 + self.rng.below(3)).collect();
        let cout = groups * (1 + self.rng.below(2));
        match self.rng.below(3) {
            0 => {
                let mut ws = vec![cout, c / groups];
                ws.extend(&kernel);
                let w = self.like(&TensorType::new(ty.dtype, ws));
                self.push(Op::Conv(p), &[x, w]);
            }
            1 => {
                for j in 0..nd {
                    p.output_padding[j] = self.rng.below(p.stride[j].max(p.dilation[j]));
                }
                let mut ws = vec![c, cout / groups];
                ws.extend(&kernel);
                let w = self.like(&TensorType::new(ty.dtype, ws));
                self.push(Op::ConvTranspose(p), &[x, w]);
            }
            _ => {
                let mut ws = vec![cout, c / groups];
                ws.extend(&kernel);
                let w = self.like(&TensorType::new(ty.dtype, ws));
                let Ok(y) = self.g.conv(x, w, p.clone()) else {
                    return;
                };
                let dy = self.like(&self.g.ty(y).clone());
                self.push(Op::ConvWeight { params: p, kernel }, &[x, dy]);
            }
        }
    }

    fn dtype_float(&mut self) -> DType {
        if self.rng.chance(0.5) {
            DType::F32
        } else {
            DType::F64
        }
    }
}

/// A random shape with as many elements as `shape`: its sizes shuffled, merged and split by
/// unit axes.
fn reshape_target(rng: &mut Rng, shape: &[usize]) -> Vec<usize> {
    let mut s: Vec<usize> = shape.to_vec();
    if rng.chance(0.5) && s.len() >= 2 {
        let i = rng.below(s.len() - 1);
        let merged = s[i] * s[i + 1];
        s.splice(i..i + 2, [merged]);
    }
    if rng.chance(0.5) {
        let i = rng.below(s.len() + 1);
        s.insert(i, 1);
    }
    if rng.chance(0.3) {
        s.retain(|&d| d != 1);
    }
    s
}

struct Random {
    graph: Graph,
    /// Float nodes that depend on a param, for autodiff.
    params: Vec<NodeId>,
}

/// A random graph of `steps` steps with 1 to 4 outputs (and usually some dead code).
fn random_graph(rng: &mut Rng, steps: usize, sign_blind: bool, floats_only: bool) -> Random {
    random_graph_with(rng, steps, sign_blind, floats_only, false)
}

/// [`random_graph`], optionally with every non-leaf node an output (nothing is dead, so every
/// rewrite is observed) and more near-duplicates.
fn random_graph_with(
    rng: &mut Rng,
    steps: usize,
    sign_blind: bool,
    floats_only: bool,
    all_outputs: bool,
) -> Random {
    let mut gen = Gen {
        rng,
        g: Graph::new(),
        pool: vec![],
        sign_blind,
        floats_only,
        inputs: 0,
        dup_rate: 0.2,
    };
    for _ in 0..2 + gen.rng.below(2) {
        let s = gen.shape();
        let d = gen.dtype();
        gen.leaf(TensorType::new(d, s));
    }
    let s = gen.shape();
    let d = gen.dtype_float();
    gen.g.param("w", TensorType::new(d, s)).unwrap();
    gen.pool.push(gen.g.params["w"]);
    if all_outputs {
        gen.dup_rate = 0.6;
    }
    for _ in 0..steps {
        gen.step();
    }
    let n_out = 1 + gen.rng.below(4);
    for k in 0..n_out {
        let o = if k == 0 {
            *gen.pool.last().unwrap()
        } else {
            gen.any()
        };
        gen.g.set_output(format!("out{k}"), o);
    }
    if all_outputs {
        for n in gen.g.node_ids() {
            if !gen.g.node(n).op.is_leaf() {
                gen.g.set_output(format!("n{}", n.index()), n);
            }
        }
    }
    let params = gen.g.params.values().copied().collect();
    Random {
        graph: gen.g,
        params,
    }
}

#[test]
fn random_graphs_keep_their_semantics() {
    let mut rng = Rng(2024);
    let (mut before_total, mut after_total) = (0, 0);
    let mut rewrites: HashMap<Pass, usize> = HashMap::new();
    let mut ops_seen: HashMap<&str, usize> = HashMap::new();
    for case in 0..400 {
        let steps = 8 + rng.below(30);
        let r = random_graph(&mut rng, steps, false, false);
        verify(&r.graph).unwrap();
        for n in r.graph.node_ids() {
            *ops_seen.entry(r.graph.node(n).op.name()).or_default() += 1;
        }
        let mut g = r.graph.clone();
        let report = optimize(&mut g, &PassOptions::default())
            .unwrap_or_else(|e| panic!("case {case}: {e}\n{}", r.graph));
        assert!(report.converged, "case {case}: not converged\n{}", r.graph);
        assert!(g.len() <= r.graph.len(), "case {case}: the graph grew");
        for (p, _, n, _) in report.totals() {
            *rewrites.entry(p).or_default() += n;
        }
        before_total += r.graph.len();
        after_total += g.len();
        assert_same_semantics(&r.graph, &g, &mut rng, 3, false, &format!("case {case}"));
        // A second run finds nothing left to do, and the text form round-trips.
        let again = optimize(&mut g, &PassOptions::default()).unwrap();
        assert_eq!(
            again.runs.iter().map(|r| r.rewrites).sum::<usize>(),
            0,
            "case {case}: not a fixed point\n{g}"
        );
        parse(&print(&g)).unwrap_or_else(|e| panic!("case {case}: {e}\n{g}"));
    }
    eprintln!("random graphs: {before_total} -> {after_total} nodes; rewrites {rewrites:?}");
    for name in kiln_ir::text::OP_NAMES {
        let n = ops_seen.get(name).copied().unwrap_or(0);
        assert!(
            n >= 20,
            "op `{name}` appears only {n} times in the random graphs"
        );
    }
    for p in [Pass::Fold, Pass::Simplify, Pass::Cse, Pass::Dce] {
        assert!(
            rewrites.get(&p).copied().unwrap_or(0) > 50,
            "{p} did little: {rewrites:?}"
        );
    }
}

#[test]
fn random_graphs_with_every_node_an_output_keep_their_semantics() {
    // Nothing is dead here, so a wrong merge or rewrite anywhere shows in some output; many
    // near-duplicates (one attribute changed) test that CSE compares every attribute.
    let mut rng = Rng(777);
    for case in 0..250 {
        let steps = 6 + rng.below(20);
        let r = random_graph_with(&mut rng, steps, false, false, true);
        let mut g = r.graph.clone();
        optimize(&mut g, &PassOptions::default())
            .unwrap_or_else(|e| panic!("case {case}: {e}\n{}", r.graph));
        assert_same_semantics(
            &r.graph,
            &g,
            &mut rng,
            2,
            false,
            &format!("all-outputs case {case}"),
        );
    }
}

#[test]
fn random_movement_chains_compose_exactly() {
    // Chains of one kind of movement op (or of casts, or pads and slices in turn) on an input,
    // where the composition rules (steps of slices times steps, permutations composed, pads
    // added, lossless casts skipped, slices of pads) do all the work.
    let mut rng = Rng(4242);
    let mut composed = 0;
    for case in 0..500 {
        let mut gen = Gen {
            rng: &mut rng,
            g: Graph::new(),
            pool: vec![],
            sign_blind: false,
            floats_only: false,
            inputs: 0,
            dup_rate: 0.0,
        };
        let rank = 1 + gen.rng.below(3);
        let shape: Vec<usize> = (0..rank)
            .map(|_| gen.rng.pick(&[1, 5, 9, 12, 13, 16]))
            .collect();
        let x = gen
            .g
            .input("x", TensorType::new(DType::F32, shape))
            .unwrap();
        gen.pool.push(x);
        // Kinds 0 to 5 repeat one op; 6 alternates pad and slice (slices of pads).
        let kind = gen.rng.below(7);
        for i in 0..2 + gen.rng.below(3) {
            let last = *gen.pool.last().unwrap();
            let k = match kind {
                6 => [4, 3][i % 2],
                k => k,
            };
            gen.movement(last, k);
        }
        let out = *gen.pool.last().unwrap();
        gen.g.set_output("y", out);
        let g0 = gen.g;
        let mut g = g0.clone();
        optimize(&mut g, &PassOptions::default())
            .unwrap_or_else(|e| panic!("case {case}: {e}\n{g0}"));
        composed += g0.len() - g.len();
        assert_same_semantics(&g0, &g, &mut rng, 1, false, &format!("chain case {case}"));
    }
    assert!(composed > 300, "only {composed} nodes composed away");
}

/// Every slice of a padded 1-d tensor and every slice of a slice, for small sizes: the
/// composition rules must give the elements the interpreter gives.
#[test]
fn slices_of_pads_and_of_slices_exhaustively() {
    fn ranges(d: usize) -> Vec<SliceAxis> {
        let mut v = vec![];
        for start in 0..=d {
            for end in start..=d {
                for step in 1..=3 {
                    v.push(SliceAxis { start, end, step });
                }
            }
        }
        v
    }
    let mut checked = 0;
    for d in 0..8 {
        let y = Literal::from_f64(
            vec![d],
            DType::F64,
            &(1..=d).map(|i| i as f64).collect::<Vec<_>>(),
        );
        let binds = HashMap::from([("y".to_string(), y)]);
        let mut check = |g0: Graph| {
            let mut g = g0.clone();
            optimize(&mut g, &PassOptions::default()).unwrap();
            let (a, b) = (run(&g0, &binds).unwrap(), run(&g, &binds).unwrap());
            assert_eq!(a["r"], b["r"], "\n{g0}\n{g}");
            checked += 1;
        };
        for lo in 0..3 {
            for hi in 0..3 {
                if d > 4 {
                    break;
                }
                for r in ranges(lo + d + hi) {
                    let mut g = Graph::new();
                    let x = g.input("y", t(DType::F64, &[d])).unwrap();
                    let p = g.pad(x, vec![lo], vec![hi], -7.0).unwrap();
                    let s = g.slice(p, vec![r]).unwrap();
                    g.set_output("r", s);
                    check(g);
                }
            }
        }
        for a in ranges(d) {
            for b in ranges(a.len()) {
                let mut g = Graph::new();
                let x = g.input("y", t(DType::F64, &[d])).unwrap();
                let s = g.slice(x, vec![a]).unwrap();
                let s = g.slice(s, vec![b]).unwrap();
                g.set_output("r", s);
                check(g);
            }
        }
    }
    assert!(checked > 1000);
}

#[test]
fn random_graphs_keep_their_values_without_signed_zeros() {
    // With `no_signed_zeros` a -0.0 may become 0.0; without the ops that turn the sign of a
    // zero into a different value (recip, div, pow), the values stay equal.
    let mut rng = Rng(99);
    let opts = PassOptions {
        no_signed_zeros: true,
        ..PassOptions::default()
    };
    for case in 0..150 {
        let steps = 8 + rng.below(25);
        let r = random_graph(&mut rng, steps, true, false);
        let mut g = r.graph.clone();
        optimize(&mut g, &opts).unwrap_or_else(|e| panic!("case {case}: {e}\n{}", r.graph));
        assert_same_semantics(&r.graph, &g, &mut rng, 3, true, &format!("nsz case {case}"));
    }
}

#[test]
fn backend_pipeline_strips_detach_and_keeps_values() {
    let mut rng = Rng(5);
    let mut stripped = 0;
    for case in 0..100 {
        let steps = 8 + rng.below(25);
        let r = random_graph(&mut rng, steps, false, false);
        let mut g = r.graph.clone();
        optimize(&mut g, &PassOptions::backend()).unwrap();
        assert!(g
            .node_ids()
            .iter()
            .all(|&n| !matches!(g.node(n).op, Op::Detach)));
        stripped += r
            .graph
            .node_ids()
            .iter()
            .filter(|&&n| matches!(r.graph.node(n).op, Op::Detach))
            .count();
        assert_same_semantics(
            &r.graph,
            &g,
            &mut rng,
            2,
            false,
            &format!("backend case {case}"),
        );
    }
    assert!(stripped > 10);
}

// ----- backward graphs -------------------------------------------------------------------------

/// Differentiates `sum(out)` of a float output with respect to every param, and returns the
/// graph with the loss and the gradients as outputs.
fn with_gradients(mut g: Graph, out: NodeId) -> Option<Graph> {
    let params: Vec<NodeId> = g.params.values().copied().collect();
    let loss = if g.ty(out).rank() == 0 {
        out
    } else {
        let axes = (0..g.ty(out).rank()).collect();
        g.reduce(ReduceOp::Sum, out, axes).ok()?
    };
    let grads = grad_of(&mut g, loss, &params).ok()?;
    g.outputs.clear();
    g.set_output("loss", loss);
    let mut any = false;
    for (name, gr) in g
        .params
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .into_iter()
        .zip(grads)
    {
        if let Some(gr) = gr {
            g.set_output(format!("grad.{name}"), gr);
            any = true;
        }
    }
    any.then_some(g)
}

#[test]
fn random_backward_graphs_shrink_and_keep_their_values() {
    let mut rng = Rng(31337);
    let (mut before_total, mut after_total, mut cases) = (0, 0, 0);
    // Nodes left by DCE alone: the random forward graphs have dead code, which says nothing
    // about the other passes.
    let mut live_total = 0;
    let mut attempts = 0;
    while cases < 120 {
        attempts += 1;
        assert!(attempts < 2000, "too few differentiable random graphs");
        let steps = 6 + rng.below(20);
        let r = random_graph(&mut rng, steps, false, true);
        let out = r.graph.outputs["out0"];
        if !r.graph.dtype(out).is_float() || r.params.is_empty() {
            continue;
        }
        let Some(g0) = with_gradients(r.graph, out) else {
            continue;
        };
        let mut live = g0.clone();
        dce(&mut live).unwrap();
        live_total += live.len();
        let mut g = g0.clone();
        optimize(&mut g, &PassOptions::default())
            .unwrap_or_else(|e| panic!("case {cases}: {e}\n{g0}"));
        assert!(g.len() <= live.len());
        before_total += g0.len();
        after_total += g.len();
        assert_same_semantics(
            &g0,
            &g,
            &mut rng,
            3,
            false,
            &format!("backward case {cases}"),
        );
        cases += 1;
    }
    eprintln!(
        "random backward graphs: {before_total} nodes, {live_total} live, {after_total} optimised"
    );
    assert!(
        (after_total as f64) < 0.85 * live_total as f64,
        "backward graphs shrank only from {live_total} live nodes to {after_total}"
    );
}

fn t(dtype: DType, shape: &[usize]) -> TensorType {
    TensorType::new(dtype, shape.to_vec())
}

/// The MLP of `tests/ir/mlp.kir` with its backward graph.
fn mlp_training_graph() -> Graph {
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ir/mlp.kir"))
            .unwrap();
    let g = parse(&src).unwrap();
    let loss = g.outputs["loss"];
    with_gradients(g, loss).unwrap()
}

/// A small conv net the way the front end composes it: conv + bias, ReLU as
/// `where(x > 0, x, 0)`, 2x2 max pooling from strided slices and `where(a > b, a, b)`, a
/// flatten, a linear layer and a softmax cross-entropy mean.
fn convnet_training_graph() -> Graph {
    let f = DType::F32;
    let mut g = Graph::new();
    let x = g.input("x", t(f, &[2, 1, 8, 8])).unwrap();
    let labels = g.input("labels", t(DType::I64, &[2])).unwrap();
    let w1 = g.param("conv1.weight", t(f, &[4, 1, 3, 3])).unwrap();
    let b1 = g.param("conv1.bias", t(f, &[4])).unwrap();
    let w2 = g.param("fc.weight", t(f, &[36, 3])).unwrap();
    let b2 = g.param("fc.bias", t(f, &[3])).unwrap();
    let c = g.conv(x, w1, ConvParams::new(2)).unwrap(); // [2,4,6,6]
    let b1 = g.reshape(b1, vec![4, 1, 1]).unwrap();
    let b = g.broadcast_to(b1, &[2, 4, 6, 6]).unwrap();
    let h = g.add(c, b).unwrap();
    let zero = g.full_like(0.0, h).unwrap();
    let pos = g.compare(CmpOp::Gt, h, zero).unwrap();
    let h = g.select(pos, h, zero).unwrap();
    let mut pooled = None;
    for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let axes = vec![
            SliceAxis::full(2),
            SliceAxis::full(4),
            SliceAxis {
                start: i,
                end: 6,
                step: 2,
            },
            SliceAxis {
                start: j,
                end: 6,
                step: 2,
            },
        ];
        let s = g.slice(h, axes).unwrap();
        pooled = Some(match pooled {
            None => s,
            Some(m) => {
                let gt = g.compare(CmpOp::Gt, s, m).unwrap();
                g.select(gt, s, m).unwrap()
            }
        });
    }
    let flat = g.reshape(pooled.unwrap(), vec![2, 36]).unwrap();
    let logits = g.matmul(flat, w2).unwrap();
    let bias = g.broadcast_to(b2, &[2, 3]).unwrap();
    let logits = g.add(logits, bias).unwrap();
    // log-softmax
    let m = g.reduce(ReduceOp::Max, logits, vec![1]).unwrap();
    let m = g.push(Op::Detach, &[m]).unwrap();
    let me = g.expand(m, vec![2, 3]).unwrap();
    let z = g.sub(logits, me).unwrap();
    let e = g.unary(UnaryOp::Exp, z).unwrap();
    let s = g.reduce(ReduceOp::Sum, e, vec![1]).unwrap();
    let ls = g.unary(UnaryOp::Log, s).unwrap();
    let lse = g.expand(ls, vec![2, 3]).unwrap();
    let logp = g.sub(z, lse).unwrap();
    // one-hot by comparing with an iota
    let l2 = g.reshape(labels, vec![2, 1]).unwrap();
    let l2 = g.expand(l2, vec![2, 3]).unwrap();
    let iota = g
        .constant(Literal::new(vec![1, 3], Data::I64(vec![0, 1, 2])).unwrap())
        .unwrap();
    let iota = g.expand(iota, vec![2, 3]).unwrap();
    let hot = g.compare(CmpOp::Eq, l2, iota).unwrap();
    let hot = g.cast(hot, f).unwrap();
    let picked = g.mul(logp, hot).unwrap();
    let total = g.reduce(ReduceOp::Sum, picked, vec![0, 1]).unwrap();
    let total = g.reshape(total, vec![]).unwrap();
    let loss = g.scale(total, -0.5).unwrap();
    g.set_output("loss", loss);
    with_gradients(g, loss).unwrap()
}

#[test]
fn training_graphs_of_an_mlp_and_a_conv_net_shrink() {
    let mut rng = Rng(11);
    for (name, g0) in [
        ("mlp", mlp_training_graph()),
        ("convnet", convnet_training_graph()),
    ] {
        let mut g = g0.clone();
        let report = optimize(&mut g, &PassOptions::backend()).unwrap();
        eprintln!("{name}: {} -> {} nodes\n{report}", g0.len(), g.len());
        assert!(g.len() < g0.len(), "{name} did not shrink");
        assert_same_semantics(&g0, &g, &mut rng, 4, false, name);
    }
}

// ----- the pass manager ------------------------------------------------------------------------

/// `y = x * 1 + (x * 1)`, with a dead `exp` and an unused input.
fn small() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", t(DType::F32, &[2, 3])).unwrap();
    g.input("unused", t(DType::I64, &[4])).unwrap();
    let one = g.full(1.0, t(DType::F32, &[2, 3])).unwrap();
    let a = g.mul(x, one).unwrap();
    let b = g.mul(x, one).unwrap();
    let y = g.add(a, b).unwrap();
    g.unary(UnaryOp::Exp, y).unwrap();
    g.set_output("y", y);
    g
}

#[test]
fn report_counts_nodes_and_records_dumps() {
    let mut g = small();
    let opts = PassOptions {
        dump_ir: true,
        ..PassOptions::default()
    };
    let report = optimize(&mut g, &opts).unwrap();
    assert_eq!(report.nodes_before, 7);
    assert_eq!(report.nodes_after, 3);
    assert_eq!(g.len(), 3);
    assert!(report.converged);
    // Every round runs the whole pipeline; the last one changes nothing.
    assert_eq!(report.runs.len(), 4 * report.iterations);
    assert!(report.runs[report.runs.len() - 4..]
        .iter()
        .all(|r| r.rewrites == 0));
    let first = &report.runs[0];
    assert_eq!(
        (first.pass, first.iteration, first.nodes_before),
        (Pass::Fold, 0, 7)
    );
    // One dump per run that changed something, the last equal to the final graph.
    assert_eq!(
        report.dumps.len(),
        report.runs.iter().filter(|r| r.rewrites > 0).count()
    );
    assert_eq!(report.dumps.last().unwrap().text, print(&g));
    let table = report.to_string();
    assert!(table.contains("7 -> 3 nodes"), "{table}");
    assert!(table.contains("simplify"), "{table}");
    assert_eq!(
        print(&g),
        "graph {\n  %0: f32[2,3] = input \"x\"\n  %1: i64[4] = input \"unused\"\n  %2: f32[2,3] = add %0, %0\n  output \"y\" = %2\n}\n"
    );
}

#[test]
fn dce_keeps_unused_inputs_and_params_so_bindings_stay_valid() {
    let mut g = Graph::new();
    let x = g.input("x", t(DType::F32, &[2])).unwrap();
    let p = g.param("p", t(DType::F32, &[2])).unwrap();
    let e = g.unary(UnaryOp::Exp, p).unwrap();
    let _dead = g.add(e, x).unwrap();
    g.set_output("x", x);
    assert_eq!(dce(&mut g).unwrap(), 2);
    assert_eq!(g.len(), 2);
    assert_eq!(g.inputs["x"], x);
    assert_eq!(g.params["p"], p);
    // No outputs: only the declarations are left.
    g.outputs.clear();
    assert_eq!(dce(&mut g).unwrap(), 0);
    assert_eq!(g.len(), 2);
}

#[test]
fn optimize_with_no_passes_or_rounds_only_verifies() {
    let mut g = small();
    let n = g.len();
    let r = optimize(
        &mut g,
        &PassOptions {
            passes: vec![],
            ..PassOptions::default()
        },
    )
    .unwrap();
    assert_eq!((r.runs.len(), g.len()), (0, n));
    let r = optimize(
        &mut g,
        &PassOptions {
            max_iterations: 0,
            ..PassOptions::default()
        },
    )
    .unwrap();
    assert!(!r.converged);
    assert_eq!(g.len(), n);
}

#[test]
fn cse_keeps_the_best_location_and_valid_tags() {
    let loc = |line| {
        Some(Loc {
            file: "m.rs".into(),
            line,
            col: 1,
        })
    };
    let mut g = Graph::new();
    let x = g.param("x", t(DType::F64, &[3])).unwrap();
    // A forward node without a location, and an equal one with a location.
    let a = g.unary(UnaryOp::Exp, x).unwrap();
    g.set_origin(loc(7), None);
    let b = g.unary(UnaryOp::Exp, x).unwrap();
    let s = g.add(a, b).unwrap();
    let sum = g.reduce(ReduceOp::Sum, s, vec![0]).unwrap();
    // Gradient nodes are tagged with a and b; after the merge those of b name a.
    let gx = grad_of(&mut g, sum, &[x]).unwrap()[0].unwrap();
    g.set_output("s", sum);
    g.set_output("gx", gx);
    let before = g.clone();
    assert!(cse(&mut g).unwrap() >= 1);
    verify(&g).unwrap();
    assert!(!g.contains(b));
    assert_eq!(g.node(a).loc, loc(7), "the merged node keeps the location");
    for n in g.node_ids() {
        if let Some(tag) = g.node(n).grad_of {
            assert!(g.contains(tag) && tag != n);
        }
    }
    assert_same_semantics(&before, &g, &mut Rng(1), 4, false, "cse tags");
}

#[test]
fn strip_detach_is_separate_from_the_default_pipeline() {
    let mut g = Graph::new();
    let x = g.param("x", t(DType::F32, &[2])).unwrap();
    let d = g.push(Op::Detach, &[x]).unwrap();
    g.set_output("d", d);
    optimize(&mut g, &PassOptions::default()).unwrap();
    assert!(
        matches!(g.node(g.outputs["d"]).op, Op::Detach),
        "detach matters to autodiff"
    );
    assert_eq!(strip_detach(&mut g).unwrap(), 1);
    assert_eq!(g.outputs["d"], x);
}

#[test]
fn folding_caps_the_size_of_constants() {
    // exp of a non-uniform const of 64 elements: folded with the default cap, not with 16.
    let mut g = Graph::new();
    let lit = Literal::from_f64(
        vec![8, 8],
        DType::F32,
        &(0..64).map(f64::from).collect::<Vec<_>>(),
    );
    let c = g.constant(lit).unwrap();
    let e = g.unary(UnaryOp::Exp, c).unwrap();
    g.set_output("e", e);
    let mut small = g.clone();
    let opts = PassOptions {
        max_const_elements: 16,
        ..PassOptions::default()
    };
    optimize(&mut small, &opts).unwrap();
    assert!(matches!(
        small.node(small.outputs["e"]).op,
        Op::Unary(UnaryOp::Exp)
    ));
    optimize(&mut g, &PassOptions::default()).unwrap();
    assert!(matches!(g.node(g.outputs["e"]).op, Op::Const(_)));
    // A uniform result of any size is one `full`, computed without materialising it.
    let mut g = Graph::new();
    let big = t(DType::F32, &[1024, 1024, 64]);
    let a = g.full(0.1, big.clone()).unwrap();
    let b = g.full(3.0, big).unwrap();
    let p = g.mul(a, b).unwrap();
    let s = g.reduce(ReduceOp::Sum, p, vec![2]).unwrap();
    g.set_output("s", s);
    optimize(&mut g, &PassOptions::default()).unwrap();
    let sum64 = (0..64).fold(0.0f64, |acc, _| acc + f64::from(0.1f32 * 3.0f32)) as f32;
    match &g.node(g.outputs["s"]).op {
        Op::Full { value, .. } => assert_eq!(*value as f32, sum64),
        op => panic!("not folded: {op:?}"),
    }
}

#[test]
fn uniform_i64_beyond_f64_precision_stays_a_const() {
    let mut g = Graph::new();
    let v = (1i64 << 60) + 1;
    let c = g
        .constant(Literal::new(vec![3], Data::I64(vec![v; 3])).unwrap())
        .unwrap();
    let n = g.unary(UnaryOp::Neg, c).unwrap();
    g.set_output("n", n);
    optimize(&mut g, &PassOptions::default()).unwrap();
    match &g.node(g.outputs["n"]).op {
        Op::Const(lit) => assert_eq!(lit.data, Data::I64(vec![-v; 3])),
        op => panic!("expected a const, got {op:?}"),
    }
}

#[test]
fn float_times_zero_is_not_folded_but_integer_times_zero_is() {
    for (dtype, folded) in [(DType::F32, false), (DType::F64, false), (DType::I64, true)] {
        let mut g = Graph::new();
        let x = g.input("x", t(dtype, &[3])).unwrap();
        let z = g.full(0.0, t(dtype, &[3])).unwrap();
        let y = g.mul(x, z).unwrap();
        g.set_output("y", y);
        optimize(&mut g, &PassOptions::default()).unwrap();
        let is_full = matches!(g.node(g.outputs["y"]).op, Op::Full { .. });
        assert_eq!(is_full, folded, "{dtype}");
        // inf * 0 and NaN * 0 are still NaN
        if dtype.is_float() {
            let v = Literal::from_f64(vec![3], dtype, &[f64::INFINITY, f64::NAN, 1.0]);
            let r = run(&g, &HashMap::from([("x".to_string(), v)])).unwrap();
            let y = r["y"].to_f64_vec();
            assert!(y[0].is_nan() && y[1].is_nan() && y[2] == 0.0);
        }
    }
}

#[test]
fn rewrites_keep_the_users_location_and_tag() {
    let mut g = parse(
        "graph {\n  %0: f32[2,3] = input \"x\"\n  %1: f32[3,2] = permute %0 perm=[1,0] @ \"a.rs\":1:1\n  %2: f32[2,3] = permute %1 perm=[1,0] @ \"a.rs\":2:1\n  %3: f32[6] = reshape %2 shape=[6] @ \"a.rs\":3:1\n  %4: f32[3,2] = reshape %3 shape=[3,2] grad(%1) @ \"a.rs\":4:1\n  output \"y\" = %4\n}\n",
    )
    .unwrap();
    optimize(&mut g, &PassOptions::default()).unwrap();
    let y = g.node(g.outputs["y"]);
    assert_eq!(y.op, Op::Reshape(vec![3, 2]));
    assert_eq!(y.loc.as_ref().map(|l| l.line), Some(4));
    // %1 is gone (dead), so the tag naming it was cleared
    assert_eq!(y.grad_of, None);
}

/// Timing of `optimize` on big backward graphs (`--ignored --nocapture`). The passes are
/// linear apart from `Graph::remove_node`, which scans every node to clear gradient tags, so
/// removing many nodes is quadratic: about 0.1 s for 6500 nodes, 0.4 s for 13000.
#[test]
#[ignore = "a timing measurement of optimize on large graphs (run with --ignored), not a correctness check"]
fn bench_optimize_large_backward_graph() {
    for n in [400usize, 800] {
        let mut g = Graph::new();
        let x = g.param("x", t(DType::F32, &[4, 4])).unwrap();
        let mut cur = x;
        for i in 0..n {
            let one = g.full(1.0, t(DType::F32, &[4, 4])).unwrap();
            let m = g.mul(cur, one).unwrap();
            let e = g.unary(UnaryOp::Tanh, m).unwrap();
            let e2 = g.unary(UnaryOp::Tanh, m).unwrap();
            cur = g.add(e, e2).unwrap();
            if i % 3 == 0 {
                let p = g.permute(cur, vec![1, 0]).unwrap();
                cur = g.permute(p, vec![1, 0]).unwrap();
            }
        }
        let s = g.reduce(ReduceOp::Sum, cur, vec![0, 1]).unwrap();
        let gx = grad_of(&mut g, s, &[x]).unwrap()[0].unwrap();
        g.set_output("s", s);
        g.set_output("gx", gx);
        let before = g.len();
        let t0 = std::time::Instant::now();
        let r = optimize(&mut g, &PassOptions::default()).unwrap();
        eprintln!("{before} -> {} nodes in {:?}\n{r}", g.len(), t0.elapsed());
    }
}
