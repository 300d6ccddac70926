//! Scheduling: which nodes get a buffer and a kernel, and which are computed inside the
//! kernels that use them.
//!
//! The rules, applied to the needed nodes in operand-first order:
//! - a bound node is read from the caller's value; an unbound `input`/`param` is an error;
//! - reductions and contractions always get a kernel and a buffer (a reduction's consumers
//!   iterate over a different index space; a contraction is a library call);
//! - an operand of a contraction gets a buffer (the routines take contiguous row-major
//!   arrays), and so does every wanted node;
//! - every other node (elementwise ops, `full`, movement ops: reshape, permute, expand,
//!   slice, pad, concat) is *inlined*: its consumers compute it from its operands, movement
//!   ops becoming index arithmetic. Exceptions keep recomputation bounded: a node that costs
//!   arithmetic and is broadcast by an `expand` (it would be recomputed per broadcast copy),
//!   a node of more than trivial cost that would be inlined into several kernels (uses within
//!   one kernel are computed once), and a node whose inlined expression grows too large get a
//!   buffer of their own;
//! - a `reshape` or `detach` that needs a buffer while its operand has one shares it (same
//!   row-major data): an alias, no kernel.
//!
//! Reductions consume their inlined elementwise producers (`sum(exp(x - m))` is one kernel);
//! a contraction's elementwise consumer becomes its epilogue when nothing else reads the
//! contraction ([`fuse_epilogues`]).

use crate::canon::Canon;
use kiln_ir::{BinaryOp, Graph, IrError, Op, Result, UnaryOp};

/// Where a needed node's value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Bound by the caller at run time.
    Bound,
    /// Constant data of the program.
    Const,
    /// Computed by a kernel into a buffer of its own.
    Kernel,
    /// Shares the buffer of the node with this canonical number (a reshape or detach of it).
    Alias(usize),
    /// Computed inside the kernels that use it.
    Inline,
    /// A contraction whose kernel writes the buffer of this node, an elementwise node whose
    /// kernel, run right after it, finishes the values in place (epilogue fusion: bias,
    /// activation, residual add applied while the contraction's output is in cache). See
    /// [`fuse_epilogues`].
    Into(usize),
}

/// The placement of every needed node and the kernels in execution order.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub place: Vec<Placement>,
    /// Canonical numbers of the nodes computed by kernels, in execution order.
    pub kernels: Vec<usize>,
}

impl Schedule {
    /// The node whose buffer holds node `i`'s value, if it has one.
    pub fn owner(&self, i: usize) -> Option<usize> {
        Schedule::owner_of(&self.place, i)
    }

    /// The contraction whose epilogue the kernel of node `i` is, if any (it then runs in
    /// place over `i`'s buffer, right after that contraction).
    pub fn epilogue_of(&self, i: usize) -> Option<usize> {
        self.place.iter().position(|p| *p == Placement::Into(i))
    }
}

/// Above this inlined cost a node used more than once gets its own buffer.
const SHARED_COST: u32 = 7;
/// Above this inlined cost any node gets its own buffer (bounds kernel size).
const MAX_INLINE_COST: u32 = 48;
/// Above this many inlined nodes any node gets its own buffer.
const MAX_INLINE_NODES: usize = 64;

/// Whether epilogue fusion is on (`KILN_EPILOGUE=0` turns it off, to compare).
fn epilogues_enabled() -> bool {
    std::env::var("KILN_EPILOGUE").map_or(true, |v| v != "0")
}

/// Relative cost of computing a node once, given its operands.
fn op_cost(op: &Op) -> u32 {
    match op {
        Op::Input { .. } | Op::Param { .. } | Op::Const(_) | Op::Full { .. } => 0,
        Op::Detach | Op::Reshape(_) | Op::Permute(_) | Op::Expand(_) | Op::Slice(_) => 0,
        Op::Pad { .. } | Op::Concat(_) => 1,
        Op::Unary(u) => match u {
            UnaryOp::Neg | UnaryOp::Abs => 1,
            UnaryOp::Sqrt | UnaryOp::Recip => 2,
            UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Sigmoid => 8,
        },
        Op::Binary(b) => match b {
            BinaryOp::Div => 2,
            BinaryOp::Pow => 16,
            _ => 1,
        },
        Op::Compare(_) | Op::Where | Op::Cast(_) => 1,
        Op::Reduce { .. } | Op::MatMul | Op::Conv(_) | Op::ConvTranspose(_) => 0,
        Op::ConvWeight { .. } => 0,
    }
}

fn is_contraction(op: &Op) -> bool {
    matches!(
        op,
        Op::MatMul | Op::Conv(_) | Op::ConvTranspose(_) | Op::ConvWeight { .. }
    )
}

/// `input `x` (%3)` or `param `w` (%1)`, numbered as the text form prints the graph.
fn describe(graph: &Graph, id: kiln_ir::NodeId) -> String {
    let num = graph.context(id).node;
    match &graph.node(id).op {
        Op::Input { name, .. } => format!("input `{name}` (%{num})"),
        Op::Param { name, .. } => format!("param `{name}` (%{num})"),
        op => format!("%{num} ({})", op.name()),
    }
}

/// Places every needed node of `canon`.
pub fn schedule(graph: &Graph, canon: &Canon) -> Result<Schedule> {
    let n = canon.order.len();
    // Users among the needed, computed nodes (one entry per operand slot).
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (j, &id) in canon.order.iter().enumerate() {
        if canon.bound[j] {
            continue;
        }
        for o in graph.operands(id) {
            users[canon.number[&o]].push(j);
        }
    }
    let mut wanted = vec![false; n];
    for &w in &canon.wanted {
        wanted[w] = true;
    }
    let mut place = vec![Placement::Inline; n];
    // The distinct nodes an inlined node's expression computes (itself and its inlined
    // producers), and their total cost: a DAG, so a node used twice in one expression is
    // counted once (the kernel computes it once).
    let mut inlined: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut cost = vec![0u32; n];
    let mut kernels = Vec::new();
    for (i, &id) in canon.order.iter().enumerate() {
        let node = graph.node(id);
        if canon.bound[i] {
            place[i] = Placement::Bound;
            continue;
        }
        let used_by_contraction = users[i]
            .iter()
            .any(|&u| is_contraction(&graph.node(canon.order[u]).op));
        match &node.op {
            Op::Input { .. } | Op::Param { .. } => {
                return Err(IrError::Eval(format!(
                    "{} of type {} is not bound",
                    describe(graph, id),
                    node.ty
                )));
            }
            Op::Const(lit) => {
                place[i] = if lit.numel() <= 1 && !wanted[i] && !used_by_contraction {
                    Placement::Inline
                } else {
                    Placement::Const
                };
                continue;
            }
            op if matches!(op, Op::Reduce { .. }) || is_contraction(op) => {
                place[i] = Placement::Kernel;
                kernels.push(i);
                continue;
            }
            _ => {}
        }
        let operands: Vec<usize> = graph.operands(id).iter().map(|o| canon.number[o]).collect();
        let mut set = vec![i];
        for &o in &operands {
            if place[o] == Placement::Inline {
                set.extend_from_slice(&inlined[o]);
            }
        }
        set.sort_unstable();
        set.dedup();
        let c: u32 = set
            .iter()
            .map(|&j| op_cost(&graph.node(canon.order[j]).op))
            .sum();
        let numel = node.ty.numel();
        let broadcast = users[i].iter().any(|&u| {
            let un = graph.node(canon.order[u]);
            matches!(un.op, Op::Expand(_)) && un.ty.numel() > numel
        });
        let materialise = wanted[i]
            || used_by_contraction
            || (c > 0 && broadcast)
            || c > MAX_INLINE_COST
            || set.len() > MAX_INLINE_NODES;
        cost[i] = c;
        if !materialise {
            place[i] = Placement::Inline;
            inlined[i] = set;
            continue;
        }
        let alias = match node.op {
            Op::Reshape(_) | Op::Detach => operands
                .first()
                .and_then(|&o| Schedule::owner_of(&place, o)),
            _ => None,
        };
        place[i] = match alias {
            Some(o) => Placement::Alias(o),
            None => {
                kernels.push(i);
                Placement::Kernel
            }
        };
    }
    // A node inlined into several kernels is computed by each: above a small cost, give it a
    // buffer instead. First the kernels (roots) each inlined node ends up in, walking the order
    // backwards (users come after their operands). Then, walking forwards so that producers
    // decide before their users, a shared node at the *frontier* of its sharing (some user
    // lies in a different set of kernels, is a kernel, or there are several users, each of
    // which would get a copy) gets a buffer if what it computes,
    // given the buffers chosen so far, costs more than `SHARED_COST`. Deciding producers
    // first puts the buffer on the expensive shared part (the max-pool's winner index), not
    // on each cheap consumer of it (the comparisons with it), which would each recompute it.
    let mut roots: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in (0..n).rev() {
        match place[i] {
            Placement::Kernel => roots[i] = vec![i],
            Placement::Inline => {
                let mut r: Vec<usize> = users[i]
                    .iter()
                    .flat_map(|&u| roots[u].iter().copied())
                    .collect();
                r.sort_unstable();
                r.dedup();
                roots[i] = r;
            }
            _ => {}
        }
    }
    let mut inlined_now: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        if place[i] != Placement::Inline {
            continue;
        }
        let id = canon.order[i];
        let mut set = vec![i];
        for o in graph.operands(id) {
            let o = canon.number[&o];
            if place[o] == Placement::Inline {
                set.extend_from_slice(&inlined_now[o]);
            }
        }
        set.sort_unstable();
        set.dedup();
        let mut distinct_users = users[i].clone();
        distinct_users.dedup();
        let frontier = roots[i].len() > 1
            && match distinct_users[..] {
                [u] => place[u] != Placement::Inline || roots[u] != roots[i],
                _ => true,
            };
        if frontier {
            let c: u32 = set
                .iter()
                .map(|&j| op_cost(&graph.node(canon.order[j]).op))
                .sum();
            if c > SHARED_COST {
                place[i] = Placement::Kernel;
                kernels.push(i);
                continue;
            }
        }
        inlined_now[i] = set;
    }
    let mut wanted_flags = vec![false; n];
    for &w in &canon.wanted {
        wanted_flags[w] = true;
    }
    let pairs = if epilogues_enabled() {
        fuse_epilogues(
            graph,
            canon,
            &users,
            &wanted_flags,
            &mut place,
            &mut kernels,
        )
    } else {
        Vec::new()
    };
    kernels.sort_unstable();
    // Each fused contraction runs right before its epilogue (its operands are computed before
    // its old position, so later is fine; kernels it passes read neither it nor the epilogue).
    for (c, r) in pairs {
        kernels.retain(|&k| k != c);
        let at = kernels
            .iter()
            .position(|&k| k == r)
            .unwrap_or(kernels.len());
        kernels.insert(at, c);
    }
    Ok(Schedule { place, kernels })
}

impl Schedule {
    fn owner_of(place: &[Placement], i: usize) -> Option<usize> {
        match place[i] {
            Placement::Bound | Placement::Const | Placement::Kernel => Some(i),
            Placement::Alias(o) | Placement::Into(o) => Some(o),
            Placement::Inline => None,
        }
    }
}

/// Elementwise ops (operands and result of one shape, once broadcasts are explicit): what an
/// epilogue may apply to a contraction's output.
fn is_pointwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Cast(_)
    )
}

/// Epilogue fusion. A contraction `C` (not itself a result) whose value is used only
/// elementwise, at its own index (no view or broadcast of it), and only inside one
/// elementwise kernel `R` of its shape and dtype, is written straight into `R`'s buffer; `R`
/// then runs in place over it (`Placement::Into(R)`), and the CPU runs it on each finished
/// run of the contraction's output ([`crate::cpu::launch::run_fused`]). When `C`'s elementwise
/// users are computed in several kernels (a training step recomputes `conv + bias` for the
/// activation and for its gradient mask) but `C` has a single user `U` (the bias add), `U`
/// gets a buffer and becomes the epilogue: every kernel then reads `conv + bias` once
/// instead of recomputing it from two buffers.
///
/// Returns the fused pairs `(C, R)`.
fn fuse_epilogues(
    graph: &Graph,
    canon: &Canon,
    users: &[Vec<usize>],
    wanted: &[bool],
    place: &mut [Placement],
    kernels: &mut Vec<usize>,
) -> Vec<(usize, usize)> {
    let node = |i: usize| graph.node(canon.order[i]);
    let mut pairs = Vec::new();
    for c in 0..place.len() {
        if place[c] != Placement::Kernel || wanted[c] || !is_contraction(&node(c).op) {
            continue;
        }
        let ty = &node(c).ty;
        let same = |i: usize| node(i).ty == *ty;
        // The elementwise region over C, and the kernels that read it.
        let mut region: Vec<usize> = Vec::new();
        let mut readers: Vec<usize> = Vec::new();
        let mut stack: Vec<usize> = users[c].clone();
        let mut ok = !stack.is_empty();
        while let Some(u) = stack.pop() {
            if region.contains(&u) || readers.contains(&u) {
                continue;
            }
            let pointwise = is_pointwise(&node(u).op) && node(u).ty.shape == ty.shape;
            match place[u] {
                Placement::Inline if pointwise => {
                    region.push(u);
                    stack.extend_from_slice(&users[u]);
                }
                Placement::Kernel if pointwise => readers.push(u),
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        let target = match readers[..] {
            [r] if ok && same(r) => Some(r),
            _ => {
                let mut direct = users[c].clone();
                direct.dedup();
                match direct[..] {
                    [u] if place[u] == Placement::Inline
                        && same(u)
                        && is_pointwise(&node(u).op) =>
                    {
                        place[u] = Placement::Kernel;
                        kernels.push(u);
                        Some(u)
                    }
                    _ => None,
                }
            }
        };
        if let Some(r) = target {
            place[c] = Placement::Into(r);
            pairs.push((c, r));
        }
    }
    pairs
}
