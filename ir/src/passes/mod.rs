//! Graph-level optimisation passes and the pass manager that runs them.
//!
//! Every pass rewrites a [`Graph`] in place and returns how many rewrites it made. The
//! passes, one file each:
//!
//! | pass | what it does |
//! |---|---|
//! | [`fold_constants`] | evaluates ops whose operands are all `full`/`const` with the reference interpreter; a uniform result becomes a `full`, a small one a `const` |
//! | [`simplify()`] | algebraic identities (`x+0`, `x*1`, `neg(neg x)`, composed movement ops, identity movement ops, casts, `where(c, x, x)`, ...) |
//! | [`cse()`] | merges structurally equal nodes (same op and attributes, floats by bits, same operands) |
//! | [`dce()`] | removes nodes no output depends on; inputs and params always stay |
//! | [`strip_detach()`] | replaces `detach` by its operand; only after autodiff, so not in the default pipeline |
//!
//! [`optimize`] runs a pipeline of them to a fixed point (a bounded number of rounds), runs
//! the [`verify`](crate::verify())er after every pass so that a buggy rewrite is reported by the pass that made
//! it, and returns a [`PassReport`] with per-pass timings and node counts (for `KILN_PROFILE`)
//! and, on request, the IR text after every pass that changed the graph (for `KILN_DUMP=ir`).
//!
//! # Semantics
//!
//! The reference for "the same program" is the interpreter ([`crate::interp`]). With the
//! default [`PassOptions`] every rewrite is *exact* with respect to it: the optimised graph
//! computes the same bits for every output, except that a NaN may come out with another
//! payload (a NaN stays a NaN). In particular:
//! - `x * 0` is never folded for floats (`inf * 0` and `NaN * 0` are NaN, as PyTorch users
//!   expect); it is folded for `i64`;
//! - `x + 0.0` is not `x` for floats when `x` is `-0.0` (`-0.0 + 0.0` is `+0.0`, and `1/x`
//!   then differs), so by default only `x + (-0.0)` and `x - 0.0` are removed. Setting
//!   [`PassOptions::no_signed_zeros`] (LLVM's `nsz`) also rewrites `x + 0.0`, `x - (-0.0)`,
//!   `0.0 - x` and float sums over size-1 axes, which may turn a `-0.0` result into `+0.0`;
//! - reassociation is never done for floats (`sum(sum(x))` is merged only for `i64` and
//!   for `reduce_max`).
//!
//! # Node identity
//!
//! Passes keep the ids of the nodes they do not remove, so a caller holding [`NodeId`]s of
//! inputs and params can still bind them. Interior nodes may be replaced or removed: a caller
//! that binds values to interior nodes (realised activations, see [`crate::interp::eval`])
//! should make them inputs before optimising. Outputs are followed through rewrites (the
//! `outputs` map is updated), so read results through it, not through ids held from before.
//! When a node is replaced, gradient tags naming it are moved to its replacement, which
//! computes the same value; tags naming a node that is removed as dead are cleared.

mod cse;
mod dce;
mod fold;
mod simplify;
mod strip_detach;

pub use cse::cse;
pub use dce::dce;
pub use fold::fold_constants;
pub use simplify::simplify;
pub use strip_detach::strip_detach;

use crate::error::{IrError, Result};
use crate::graph::{Graph, Node, NodeId};
use crate::infer::infer;
use crate::op::Op;
use crate::{DType, Data, Literal, TensorType};
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// One optimisation pass, as named in reports and dumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// [`fold_constants`]
    Fold,
    /// [`simplify()`]
    Simplify,
    /// [`cse()`]
    Cse,
    /// [`dce()`]
    Dce,
    /// [`strip_detach()`]: only for graphs that will not be differentiated again.
    StripDetach,
}

impl Pass {
    /// The pass's name in reports, dumps and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Fold => "fold",
            Pass::Simplify => "simplify",
            Pass::Cse => "cse",
            Pass::Dce => "dce",
            Pass::StripDetach => "strip_detach",
        }
    }

    /// Runs the pass once; returns the number of rewrites (0: the graph is unchanged).
    pub fn run(self, graph: &mut Graph, opts: &PassOptions) -> Result<usize> {
        match self {
            Pass::Fold => fold_constants(graph, opts.max_const_elements),
            Pass::Simplify => simplify(graph, opts),
            Pass::Cse => cse(graph),
            Pass::Dce => dce(graph),
            Pass::StripDetach => strip_detach(graph),
        }
    }
}

impl fmt::Display for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`optimize`] runs and how.
#[derive(Clone, Debug)]
pub struct PassOptions {
    /// The pipeline, run in this order in every round. Folding comes first so that the
    /// simplifier sees the `full`s it makes; CSE then merges what both left equal, and DCE
    /// removes what nothing uses any more.
    pub passes: Vec<Pass>,
    /// Rounds of the pipeline at most; [`optimize`] stops earlier at a fixed point (a round
    /// without rewrites). Every rewrite shrinks or canonicalises the graph, so a few rounds
    /// suffice; the bound only guards against a rule that undoes another.
    pub max_iterations: usize,
    /// Largest `const` (in elements) that folding may create, so that folding does not bloat
    /// a graph with big literals (a uniform result of any size becomes a `full`, which is
    /// one number). Operands of a general fold may have up to 4 times as many elements.
    pub max_const_elements: usize,
    /// Allow rewrites that are exact except for the sign of a zero result (LLVM's `nsz`):
    /// `x + 0.0 -> x`, `x - (-0.0) -> x`, `0.0 - x -> neg(x)` and float sums over size-1
    /// axes. Off by default because `1/x` then may give `-inf` for `+inf`.
    pub no_signed_zeros: bool,
    /// Record the IR text after every pass that changed the graph in
    /// [`PassReport::dumps`] (for `KILN_DUMP=ir`).
    pub dump_ir: bool,
}

impl Default for PassOptions {
    fn default() -> PassOptions {
        PassOptions {
            passes: vec![Pass::Fold, Pass::Simplify, Pass::Cse, Pass::Dce],
            max_iterations: 10,
            max_const_elements: 4096,
            no_signed_zeros: false,
            dump_ir: false,
        }
    }
}

impl PassOptions {
    /// The default pipeline preceded by [`strip_detach()`]: for a backend about to compile a
    /// graph that autodiff has already run on (a `detach` matters only to autodiff).
    pub fn backend() -> PassOptions {
        let mut o = PassOptions::default();
        o.passes.insert(0, Pass::StripDetach);
        o
    }
}

/// One run of one pass.
#[derive(Clone, Debug)]
pub struct PassRun {
    pub pass: Pass,
    /// The round of the pipeline, from 0.
    pub iteration: usize,
    pub time: Duration,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub rewrites: usize,
}

/// The IR text after one pass run that changed the graph.
#[derive(Clone, Debug)]
pub struct IrDump {
    pub pass: Pass,
    pub iteration: usize,
    /// [`crate::text::print`] of the graph after the pass.
    pub text: String,
}

/// What [`optimize`] did.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    /// Every pass run, in order.
    pub runs: Vec<PassRun>,
    /// The IR after each run that changed the graph, when [`PassOptions::dump_ir`] is set.
    pub dumps: Vec<IrDump>,
    /// Rounds of the pipeline run.
    pub iterations: usize,
    /// Whether the last round made no rewrite (false: stopped by `max_iterations`).
    pub converged: bool,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub time: Duration,
}

impl PassReport {
    /// Per pass, in pipeline order: (pass, runs, rewrites, total time).
    pub fn totals(&self) -> Vec<(Pass, usize, usize, Duration)> {
        let mut out: Vec<(Pass, usize, usize, Duration)> = Vec::new();
        for r in &self.runs {
            match out.iter_mut().find(|t| t.0 == r.pass) {
                Some(t) => {
                    t.1 += 1;
                    t.2 += r.rewrites;
                    t.3 += r.time;
                }
                None => out.push((r.pass, 1, r.rewrites, r.time)),
            }
        }
        out
    }
}

impl fmt::Display for PassReport {
    /// A small table for `KILN_PROFILE`: one line per pass with its total rewrites and time.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "optimize: {} -> {} nodes in {} round(s){}, {:.3} ms",
            self.nodes_before,
            self.nodes_after,
            self.iterations,
            if self.converged {
                ""
            } else {
                " (not converged)"
            },
            self.time.as_secs_f64() * 1e3
        )?;
        for (pass, runs, rewrites, time) in self.totals() {
            writeln!(
                f,
                "  {:<13} {:>3} run(s) {:>7} rewrite(s) {:>10.3} ms",
                pass.name(),
                runs,
                rewrites,
                time.as_secs_f64() * 1e3
            )?;
        }
        Ok(())
    }
}

/// Optimises `graph` in place: runs `opts.passes` in rounds until a round rewrites nothing
/// or `opts.max_iterations` rounds have run.
///
/// The graph is verified first (an invalid input is reported as such, not blamed on a pass)
/// and after every pass; a pass that leaves an invalid graph makes this return the
/// verifier's error, prefixed with the pass's name. On error the graph is left as that pass
/// made it, for inspection.
pub fn optimize(graph: &mut Graph, opts: &PassOptions) -> Result<PassReport> {
    let passes: Vec<(&'static str, Pass)> = opts.passes.iter().map(|&p| (p.name(), p)).collect();
    run_pipeline(graph, opts, &passes, |p, g| p.run(g, opts))
}

/// The pass manager proper, generic over how a pass is run so that its tests can insert a
/// broken pass.
fn run_pipeline<P: IntoPass + Copy>(
    graph: &mut Graph,
    opts: &PassOptions,
    passes: &[(&'static str, P)],
    mut run: impl FnMut(P, &mut Graph) -> Result<usize>,
) -> Result<PassReport> {
    let start = Instant::now();
    crate::verify(graph).map_err(|e| prefix("before optimisation", e))?;
    let mut report = PassReport {
        nodes_before: graph.len(),
        ..PassReport::default()
    };
    for iteration in 0..opts.max_iterations {
        let mut changed = 0;
        for &(name, p) in passes {
            let nodes_before = graph.len();
            let t = Instant::now();
            let rewrites = run(p, graph).map_err(|e| prefix(&format!("pass `{name}`"), e))?;
            let time = t.elapsed();
            crate::verify(graph).map_err(|e| prefix(&format!("after pass `{name}`"), e))?;
            log::debug!(
                "pass {name} (round {iteration}): {rewrites} rewrite(s), {nodes_before} -> {} nodes, {:?}",
                graph.len(),
                time
            );
            report.runs.push(PassRun {
                pass: p.pass(),
                iteration,
                time,
                nodes_before,
                nodes_after: graph.len(),
                rewrites,
            });
            if rewrites > 0 && opts.dump_ir {
                report.dumps.push(IrDump {
                    pass: p.pass(),
                    iteration,
                    text: crate::text::print(graph),
                });
            }
            changed += rewrites;
        }
        report.iterations = iteration + 1;
        if changed == 0 {
            report.converged = true;
            break;
        }
    }
    report.nodes_after = graph.len();
    report.time = start.elapsed();
    Ok(report)
}

/// What the pass manager needs of a pass besides running it: its name in the report.
trait IntoPass {
    fn pass(self) -> Pass;
}

impl IntoPass for Pass {
    fn pass(self) -> Pass {
        self
    }
}

/// `context: error`, keeping the error's kind (and a verifier error's located node).
fn prefix(context: &str, e: IrError) -> IrError {
    match e {
        IrError::Verify { ctx, msg } => IrError::Verify {
            ctx,
            msg: format!("{context}: {msg}"),
        },
        IrError::Graph(m) => IrError::Graph(format!("{context}: {m}")),
        other => IrError::Graph(format!("{context}: {other}")),
    }
}

// ----- helpers shared by the passes ------------------------------------------------------------

/// Which nodes carry a gradient tag naming each node, so that moving the tags of a replaced
/// node does not scan the whole graph (a pass may replace thousands of nodes). Built once per
/// pass run and kept up to date by [`replace`], [`add_like`] and [`Tags::note`]; entries of
/// nodes that were removed or re-tagged since are stale and skipped.
#[derive(Default)]
struct Tags(HashMap<NodeId, Vec<NodeId>>);

impl Tags {
    fn new(graph: &Graph) -> Tags {
        let mut t = Tags::default();
        for id in graph.node_ids() {
            t.note(id, graph.node(id).grad_of);
        }
        t
    }

    /// Records that `id` is tagged with `tag`.
    fn note(&mut self, id: NodeId, tag: Option<NodeId>) {
        if let Some(t) = tag {
            self.0.entry(t).or_default().push(id);
        }
    }
}

/// Makes every use of `old` (operands and outputs) a use of `new`, moves gradient tags naming
/// `old` to `new`, and removes `old` if nothing uses it any more (inputs and params stay).
///
/// `new` computes the same value as `old`, so a gradient node "of `old`" is one of `new`. A
/// tag that would make `new` name itself takes `old`'s own tag instead.
fn replace(graph: &mut Graph, tags: &mut Tags, old: NodeId, new: NodeId) {
    if old == new {
        return;
    }
    graph.replace_all_uses(old, new);
    let old_tag = graph.node(old).grad_of;
    for id in tags.0.remove(&old).unwrap_or_default() {
        if !graph.contains(id) || graph.node(id).grad_of != Some(old) {
            continue; // stale
        }
        let tag = if id == new {
            old_tag.filter(|&t| t != new)
        } else {
            Some(new)
        };
        graph.node_mut(id).grad_of = tag;
        tags.note(id, tag);
    }
    remove_if_dead(graph, old);
}

/// Removes `id` if it is not an input, param or output and has no users.
fn remove_if_dead(graph: &mut Graph, id: NodeId) -> bool {
    let keep = matches!(graph.node(id).op, Op::Input { .. } | Op::Param { .. })
        || !graph.users(id).is_empty()
        || graph.outputs.values().any(|&o| o == id);
    if !keep {
        graph.remove_node(id);
    }
    !keep
}

/// Adds `op(operands)` with its inferred type and the location and gradient tag of `like`
/// (the node it will replace, so errors and profiles still point at the user's line).
fn add_like(
    graph: &mut Graph,
    tags: &mut Tags,
    op: Op,
    operands: &[NodeId],
    like: NodeId,
) -> Result<NodeId> {
    let tys: Vec<&TensorType> = operands.iter().map(|&o| graph.ty(o)).collect();
    let ty = infer(&op, &tys).map_err(|msg| IrError::Verify {
        ctx: Box::new(graph.context(like)),
        msg: format!(
            "internal error: a rewrite made an ill-typed `{}`: {msg}",
            op.name()
        ),
    })?;
    let (loc, grad_of) = {
        let n = graph.node(like);
        (n.loc.clone(), n.grad_of)
    };
    let id = graph.push_node(
        Node {
            op,
            ty,
            loc,
            grad_of,
        },
        operands,
    );
    tags.note(id, grad_of);
    Ok(id)
}

/// One element of a tensor, in its dtype. Compared by bits ([`Scalar::same`]), so `-0.0` and
/// `0.0` differ and a NaN equals only the same NaN.
#[derive(Clone, Copy, Debug)]
enum Scalar {
    F32(f32),
    F64(f64),
    I64(i64),
    Bool(bool),
}

impl Scalar {
    /// The element a `full value` (or `pad value=`) of `dtype` holds: [`Data::splat`]'s
    /// conversion.
    fn of_value(dtype: DType, value: f64) -> Scalar {
        Scalar::at(&Data::splat(dtype, value, 1), 0)
    }

    /// Element `i` of `data`.
    fn at(data: &Data, i: usize) -> Scalar {
        match data {
            Data::F32(v) => Scalar::F32(v[i]),
            Data::F64(v) => Scalar::F64(v[i]),
            Data::I64(v) => Scalar::I64(v[i]),
            Data::Bool(v) => Scalar::Bool(v[i]),
        }
    }

    fn dtype(self) -> DType {
        match self {
            Scalar::F32(_) => DType::F32,
            Scalar::F64(_) => DType::F64,
            Scalar::I64(_) => DType::I64,
            Scalar::Bool(_) => DType::Bool,
        }
    }

    /// The bits of the element (widened to 64).
    fn bits(self) -> u64 {
        match self {
            Scalar::F32(v) => u64::from(v.to_bits()),
            Scalar::F64(v) => v.to_bits(),
            Scalar::I64(v) => v as u64,
            Scalar::Bool(v) => u64::from(v),
        }
    }

    /// Same dtype and same bits.
    fn same(self, other: Scalar) -> bool {
        self.dtype() == other.dtype() && self.bits() == other.bits()
    }

    /// A `full` value that holds exactly this element, if there is one (an `i64` beyond
    /// `2^53` may have none: `full` stores an `f64`).
    fn to_value(self) -> Option<f64> {
        let v = match self {
            Scalar::F32(v) => f64::from(v),
            Scalar::F64(v) => v,
            Scalar::I64(v) => v as f64,
            Scalar::Bool(v) => f64::from(u8::from(v)),
        };
        Scalar::of_value(self.dtype(), v).same(self).then_some(v)
    }

    /// `n` copies of this element.
    fn splat(self, shape: &[usize]) -> Literal {
        let n: usize = shape.iter().product();
        let data = match self {
            Scalar::F32(v) => Data::F32(vec![v; n]),
            Scalar::F64(v) => Data::F64(vec![v; n]),
            Scalar::I64(v) => Data::I64(vec![v; n]),
            Scalar::Bool(v) => Data::Bool(vec![v; n]),
        };
        Literal {
            shape: shape.to_vec(),
            data,
        }
    }

    /// Whether this is the number `v` (for floats `-0.0 == 0.0` here; use [`Scalar::bits`]
    /// where the sign of zero matters).
    fn is(self, v: f64) -> bool {
        match self {
            Scalar::F32(x) => f64::from(x) == v,
            Scalar::F64(x) => x == v,
            Scalar::I64(x) => (x as f64) == v && x.unsigned_abs() < (1 << 53),
            Scalar::Bool(x) => f64::from(u8::from(x)) == v,
        }
    }

    /// `+0.0` for floats (by bits), `0` for integers, `false` for bool.
    fn is_pos_zero(self) -> bool {
        self.bits() == 0
    }

    /// `-0.0` (floats only).
    fn is_neg_zero(self) -> bool {
        match self {
            Scalar::F32(x) => x.to_bits() == (-0.0f32).to_bits(),
            Scalar::F64(x) => x.to_bits() == (-0.0f64).to_bits(),
            _ => false,
        }
    }
}

/// The single value every element of `id` holds, if `id` is a `full`, or a `const` whose
/// elements all have the same bits (an empty `const` has none).
fn uniform(graph: &Graph, id: NodeId) -> Option<Scalar> {
    match &graph.node(id).op {
        Op::Full { value, ty } => Some(Scalar::of_value(ty.dtype, *value)),
        Op::Const(lit) => uniform_data(&lit.data),
        _ => None,
    }
}

/// The value all elements of `data` share, if any (`None` when empty).
fn uniform_data(data: &Data) -> Option<Scalar> {
    fn all_same<T: Copy>(v: &[T], bits: impl Fn(T) -> u64) -> bool {
        v.split_first()
            .is_some_and(|(&a, rest)| rest.iter().all(|&b| bits(b) == bits(a)))
    }
    let ok = match data {
        Data::F32(v) => all_same(v, |x| u64::from(x.to_bits())),
        Data::F64(v) => all_same(v, f64::to_bits),
        Data::I64(v) => all_same(v, |x| x as u64),
        Data::Bool(v) => all_same(v, u64::from),
    };
    ok.then(|| Scalar::at(data, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_graph() -> Graph {
        let mut g = Graph::new();
        let x = g.input("x", TensorType::new(DType::F32, [2, 3])).unwrap();
        let one = g.full(1.0, TensorType::new(DType::F32, [2, 3])).unwrap();
        let y = g.mul(x, one).unwrap();
        g.set_output("y", y);
        g
    }

    #[derive(Clone, Copy)]
    enum Test {
        Real(Pass),
        Broken,
    }

    impl IntoPass for Test {
        fn pass(self) -> Pass {
            match self {
                Test::Real(p) => p,
                Test::Broken => Pass::Simplify,
            }
        }
    }

    #[test]
    fn a_pass_that_breaks_the_graph_is_named() {
        let mut g = small_graph();
        let opts = PassOptions::default();
        let passes = [("dce", Test::Real(Pass::Dce)), ("broken", Test::Broken)];
        let err = run_pipeline(&mut g, &opts, &passes, |p, g| match p {
            Test::Real(p) => p.run(g, &opts),
            Test::Broken => {
                // Retype a node without changing its op, as a buggy rewrite would.
                let y = g.outputs["y"];
                g.node_mut(y).ty = TensorType::new(DType::F64, [2, 3]);
                Ok(1)
            }
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("after pass `broken`"), "{err}");
        assert!(err.contains("typed f64[2,3]"), "{err}");
    }

    #[test]
    fn an_invalid_input_is_not_blamed_on_a_pass() {
        let mut g = small_graph();
        let y = g.outputs["y"];
        g.node_mut(y).ty = TensorType::new(DType::F64, [2, 3]);
        let err = optimize(&mut g, &PassOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("before optimisation"), "{err}");
    }

    #[test]
    fn scalars_compare_by_bits_and_convert_like_splat() {
        assert!(!Scalar::F32(0.0).same(Scalar::F32(-0.0)));
        assert!(Scalar::F64(f64::NAN).same(Scalar::F64(f64::NAN)));
        assert!(Scalar::of_value(DType::I64, 2.7).same(Scalar::I64(2)));
        assert_eq!(Scalar::I64(i64::MIN).to_value(), Some(-(2f64.powi(63))));
        assert_eq!(Scalar::I64((1 << 60) + 1).to_value(), None);
        assert_eq!(
            Scalar::F32(-0.0).to_value().map(f64::to_bits),
            Some((-0.0f64).to_bits())
        );
        assert!(Scalar::F32(-0.0).is_neg_zero() && !Scalar::F32(-0.0).is_pos_zero());
        assert!(uniform_data(&Data::F32(vec![])).is_none());
        assert!(uniform_data(&Data::F32(vec![0.0, -0.0])).is_none());
    }
}
