//! Compiled programs: compile a graph once, run it many times.
//!
//! [`Program::compile`] canonicalises the graph ([`crate::canon`]), and looks the structural
//! key up in the program cache ([`crate::cache`]); on a miss it copies the needed part of the
//! graph, runs the graph passes on it ([`kiln_ir::passes::optimize`]: constant folding,
//! simplification, CSE, DCE), then schedules, lowers each kernel, vectorises and verifies it,
//! plans memory and JIT-compiles. The cache is keyed on the graph *before* the passes, so a
//! hit skips them too. [`Program::run`] checks the
//! bindings, allocates the temporaries and results, runs the kernels in order and hands the
//! results back. A program is immutable after compilation and `Send + Sync`: several threads
//! may run it at once, each with its own buffers.

use crate::canon::{canonicalize, Canon};
use crate::cpu::launch::{self, run_fused, run_kernel, Prepared, RawBuf};
use crate::cpu::{self, KernelFn};
use crate::dump::{self, DumpFlags};
use crate::kernel::{self, Access, Body, Kernel};
use crate::lower::lower;
use crate::memory::{plan, MemoryPlan, Storage};
use crate::schedule::{schedule, Placement};
use kiln_ir::passes::{PassOptions, PassReport};
use kiln_ir::shape::numel;
use kiln_ir::{Data, Graph, IrError, Literal, Node, NodeId, Op, Result, TensorType};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One kernel launch of a program.
pub struct Step {
    pub kernel: Kernel,
    /// The node written (canonical number).
    pub root: usize,
    /// For each kernel parameter, the node owning its buffer.
    pub args: Vec<usize>,
    /// Nodes computed inside the kernel.
    pub fused: Vec<usize>,
    prep: Prepared,
    func: Option<KernelFn>,
    /// For a contraction whose epilogue is the next step: that kernel's parameter that is
    /// this kernel's output (the CPU runs both together, see `launch::run_fused`).
    pub(crate) fuse_next: Option<usize>,
}

/// Below this many loop iterations in all kernels together, and [`SMALL_PROGRAM_FLOPS`] in
/// all contractions, a program runs on the calling thread: handing pieces to the pool (waking
/// a sleeping thread, a few to tens of µs) would cost more than the second core saves
/// (measured: a LeNet training step at batch 1, 0.25 ms on two threads, 0.20 ms on one).
const SMALL_PROGRAM_WORK: u64 = 1 << 20;
/// See [`SMALL_PROGRAM_WORK`].
const SMALL_PROGRAM_FLOPS: f64 = 2e7;

/// Whether a program of these steps is small enough to run on one thread.
fn is_small(steps: &[Step]) -> bool {
    let work: u64 = steps.iter().map(|s| s.kernel.work()).sum();
    let flops: f64 = steps.iter().map(|s| s.prep.flops()).sum();
    work < SMALL_PROGRAM_WORK && flops < SMALL_PROGRAM_FLOPS
}

/// The kernel loop of one run, moved onto a thread of rayon's pool while the caller waits.
struct OnPool<'a, F>(&'a F);
// SAFETY: the closure only touches the run's buffers (through raw pointers it captured) and the
// program; the calling thread blocks inside `rayon::scope` until the closure has returned, so
// every borrow it holds outlives the work, and nothing else uses the buffers meanwhile. Moving
// the loop to another thread is then the same as running it on the caller.
unsafe impl<F> Send for OnPool<'_, F> {}
unsafe impl<F> Sync for OnPool<'_, F> {}

impl<F: Fn() -> Result<Vec<Duration>>> OnPool<'_, F> {
    fn call(&self) -> Result<Vec<Duration>> {
        (self.0)()
    }
}

/// A program as cached: independent of node ids, it refers to nodes by canonical number.
pub struct Compiled {
    pub(crate) steps: Vec<Step>,
    pub(crate) mem: MemoryPlan,
    /// Type of each input storage, constant data, type of each output storage.
    pub(crate) input_types: Vec<TensorType>,
    pub(crate) consts: Vec<Arc<Literal>>,
    pub(crate) output_types: Vec<TensorType>,
    /// For each input storage, the canonical number of its bound node in the graph *as given*
    /// (before the passes): what [`Program::compile`] maps to the caller's node ids.
    pub(crate) input_canon: Vec<usize>,
    /// What the graph passes did (`None`: they were not run, `KILN_PASSES=0` or a failure).
    pub(crate) passes: Option<PassReport>,
    /// For each wanted entry: its type and the node owning its buffer.
    pub(crate) results: Vec<(TensorType, usize)>,
    /// Types of the owners of buffers (for copying results out of temporaries).
    pub(crate) owner_types: HashMap<usize, TensorType>,
    pub(crate) id: String,
    pub(crate) schedule_text: String,
    pub(crate) clif: Vec<String>,
    /// Disassembly of the JIT's machine code (only with `KILN_DUMP=asm`).
    pub(crate) asm: Vec<String>,
    /// Temporaries kept between runs.
    pub(crate) pool: crate::memory::TempPool,
    /// The whole program is small (see [`SMALL_PROGRAM_WORK`]): it runs on the calling thread,
    /// every kernel unsplit, instead of waking the thread pool for each piece.
    pub(crate) sequential: bool,
    /// Keeps the machine code alive; declared last so it is dropped after `steps`.
    _code: Option<cpu::Code>,
}

/// A graph compiled for the CPU, ready to run with new bindings.
#[derive(Clone)]
pub struct Program {
    compiled: Arc<Compiled>,
    /// The node bound to each input storage, in the graph it was compiled from.
    pub(crate) input_nodes: Vec<NodeId>,
    /// Nodes declared bound that the program does not need, with their types.
    pub(crate) unused_bound: HashMap<NodeId, TensorType>,
}

fn internal(msg: impl std::fmt::Display) -> IrError {
    IrError::Eval(format!("jit: {msg}"))
}

/// A short hex id of a structural key, for dumps.
fn key_id(key: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    format!("{:08x}", h.finish() as u32)
}

/// The needed part of a graph after the graph passes, ready to compile.
struct Optimized {
    graph: Graph,
    canon: Canon,
    /// Node of `graph` bound at run time -> its canonical number in the graph as given.
    back: HashMap<NodeId, usize>,
    report: PassReport,
    /// The copy's IR text before the passes (only for `KILN_DUMP=ir`).
    before: Option<String>,
}

/// Copies the nodes `canon` needs into a fresh graph (bound nodes become operand-less
/// `input`s, so no pass can look through them; wanted nodes become outputs, which the passes
/// follow through rewrites) and optimises it. Gradient tags are dropped: autodiff is done.
fn optimize_needed(graph: &Graph, canon: &Canon, dump_ir: bool) -> Result<Optimized> {
    let mut g = Graph::new();
    let mut map: Vec<NodeId> = Vec::with_capacity(canon.order.len());
    for (i, &n) in canon.order.iter().enumerate() {
        let node = graph.node(n);
        let (op, operands) = if canon.bound[i] {
            let op = match &node.op {
                Op::Input { .. } | Op::Param { .. } => node.op.clone(),
                _ => Op::Input {
                    name: format!("__kiln_bound{i}"),
                    ty: node.ty.clone(),
                },
            };
            (op, Vec::new())
        } else {
            let ops: Vec<NodeId> = graph
                .operands(n)
                .iter()
                .map(|o| map[canon.number[o]])
                .collect();
            (node.op.clone(), ops)
        };
        let node = Node {
            op,
            ty: node.ty.clone(),
            loc: node.loc.clone(),
            grad_of: None,
        };
        map.push(g.push_node(node, &operands));
    }
    for (k, &w) in canon.wanted.iter().enumerate() {
        g.set_output(format!("w{k}"), map[w]);
    }
    let before = dump_ir.then(|| kiln_ir::text::print(&g));
    let opts = PassOptions {
        dump_ir,
        ..PassOptions::backend()
    };
    let report = kiln_ir::passes::optimize(&mut g, &opts)?;
    // Backend rewrite (reassociates float sums, so not one of the exact IR passes).
    let split = crate::split::split_reductions(&mut g)?;
    if split > 0 {
        log::debug!("split {split} large reduction(s) into two parallel stages");
    }
    // The passes keep the ids of inputs and params and follow outputs; check both.
    let wanted = (0..canon.wanted.len())
        .map(|k| {
            g.outputs
                .get(&format!("w{k}"))
                .copied()
                .ok_or_else(|| internal(format!("the passes removed wanted result {k}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut bound = HashSet::new();
    let mut back = HashMap::new();
    for (i, &b) in canon.bound.iter().enumerate() {
        if !b {
            continue;
        }
        let id = map[i];
        if !g.contains(id) || !matches!(g.node(id).op, Op::Input { .. } | Op::Param { .. }) {
            return Err(internal(format!(
                "the passes removed or rewrote bound node %{}",
                canon.order[i].index()
            )));
        }
        bound.insert(id);
        back.insert(id, i);
    }
    let canon = canonicalize(&g, &wanted, &bound)?;
    Ok(Optimized {
        graph: g,
        canon,
        back,
        report,
        before,
    })
}

/// Compiles the canonicalised graph (a cache miss): runs the graph passes on its needed part
/// unless `KILN_PASSES=0` (if they fail, which is a bug in a pass, the graph is compiled as
/// given, with a warning), then [`compile_graph`].
pub(crate) fn compile_canonical(graph: &Graph, canon: &Canon) -> Result<Compiled> {
    let flags = DumpFlags::from_env();
    let id = key_id(&canon.key);
    if !dump::passes_enabled() {
        let mut c = compile_graph(graph, canon, &id, flags)?;
        c.input_canon = c.mem.inputs.clone();
        return Ok(c);
    }
    let opt = match optimize_needed(graph, canon, flags.ir) {
        Ok(opt) => opt,
        Err(e) => {
            log::warn!("program {id}: graph passes failed, compiling without them: {e}");
            let mut c = compile_graph(graph, canon, &id, flags)?;
            c.input_canon = c.mem.inputs.clone();
            return Ok(c);
        }
    };
    if let Some(text) = &opt.before {
        dump::write(&id, "ir.00-input", text);
    }
    if flags.ir {
        for (k, d) in opt.report.dumps.iter().enumerate() {
            let what = format!("ir.{:02}-{}-{}", k + 1, d.iteration, d.pass.name());
            dump::write(&id, &what, &d.text);
        }
    }
    if dump::profile_enabled() {
        dump::report(
            &format!("kiln passes of program {id}"),
            &opt.report.to_string(),
        );
    }
    let mut c = compile_graph(&opt.graph, &opt.canon, &id, flags)?;
    c.input_canon = c
        .mem
        .inputs
        .iter()
        .map(|&j| {
            opt.back
                .get(&opt.canon.order[j])
                .copied()
                .ok_or_else(|| internal(format!("input storage {j} is not a bound node")))
        })
        .collect::<Result<_>>()?;
    c.passes = Some(opt.report);
    Ok(c)
}

/// Schedules, lowers, plans and JIT-compiles `graph` as numbered by `canon`.
fn compile_graph(graph: &Graph, canon: &Canon, id: &str, flags: DumpFlags) -> Result<Compiled> {
    let start = Instant::now();
    let id = id.to_string();
    let sched = schedule(graph, canon)?;
    // `%n` in dumps and kernel labels: the numbering of the graph's text form.
    let printed: HashMap<NodeId, usize> = kiln_ir::text::print_order(graph)
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    let labels: Vec<usize> = canon.order.iter().map(|n| printed[n]).collect();

    let mut steps = Vec::new();
    for &root in &sched.kernels {
        let mut l = lower(graph, canon, &sched, root, &labels)?;
        kernel::vectorize::vectorize(&mut l.kernel);
        kernel::verify::verify(&l.kernel).map_err(|e| internal(format!("{e}\n{}", l.kernel)))?;
        let prep = Prepared::new(&l.kernel).map_err(internal)?;
        steps.push(Step {
            kernel: l.kernel,
            root,
            args: l.args,
            fused: l.fused,
            prep,
            func: None,
            fuse_next: None,
        });
    }
    // Contractions followed by their flat epilogue run fused (see `launch::run_fused`).
    for i in 1..steps.len() {
        let (before, after) = steps.split_at_mut(i);
        let (c, e) = (&mut before[i - 1], &after[0]);
        let Body::Call(call) = &c.kernel.body else {
            continue;
        };
        if sched.place[c.root] != Placement::Into(e.root) {
            continue;
        }
        let out = c.args[call.output.0 as usize];
        c.fuse_next = e
            .args
            .iter()
            .position(|&a| a == out)
            .filter(|&j| launch::flat_only(&e.kernel, j));
    }
    // A contraction fused into an epilogue writes its epilogue's buffer: that buffer is
    // allocated at the contraction's step.
    let uses: Vec<(usize, Vec<usize>)> = steps
        .iter()
        .map(|s| (sched.owner(s.root).unwrap_or(s.root), s.args.clone()))
        .collect();
    let mem = plan(graph, canon, &sched, &uses);
    // Kernels write only the buffers of nodes they compute: temporaries and results.
    for s in &steps {
        for (p, &a) in s.kernel.params.iter().zip(&s.args) {
            let st = mem.storage[a];
            if p.access != Access::Read
                && !matches!(st, Some(Storage::Temp(_) | Storage::Output(_)))
            {
                return Err(internal(format!(
                    "kernel {} would write the buffer of %{} ({st:?})",
                    s.kernel.name, labels[a]
                )));
            }
        }
    }
    let ty = |i: usize| graph.node(canon.order[i]).ty.clone();
    let input_types = mem.inputs.iter().map(|&i| ty(i)).collect();
    let consts = mem
        .consts
        .iter()
        .map(|&i| match &graph.node(canon.order[i]).op {
            kiln_ir::Op::Const(lit) => Ok(lit.clone()),
            op => Err(internal(format!(
                "%{} ({}) placed as a constant",
                labels[i],
                op.name()
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let output_types = mem.outputs.iter().map(|&i| ty(i)).collect();
    let mut results = Vec::new();
    let mut owner_types = HashMap::new();
    for &w in &canon.wanted {
        let owner = sched
            .owner(w)
            .ok_or_else(|| internal(format!("wanted %{} has no buffer", labels[w])))?;
        owner_types.insert(owner, ty(owner));
        results.push((ty(w), owner));
    }

    let kernels: Vec<&Kernel> = steps.iter().map(|s| &s.kernel).collect();
    let jit = cpu::compile(&kernels, flags.clif, flags.asm).map_err(internal)?;
    for (s, f) in steps.iter_mut().zip(&jit.fns) {
        s.func = *f;
    }
    let schedule_text = schedule_text(graph, canon, &sched, &steps, &mem, &labels, &id);
    log::debug!(
        "compiled program {id}: {} nodes, {} kernels, {} temporaries ({} bytes) in {:.1} ms",
        canon.order.len(),
        steps.len(),
        mem.temps.len(),
        mem.temps.iter().sum::<usize>(),
        start.elapsed().as_secs_f64() * 1e3
    );
    let compiled = Compiled {
        steps,
        mem,
        input_types,
        consts,
        output_types,
        input_canon: Vec::new(),
        passes: None,
        results,
        owner_types,
        id,
        schedule_text,
        clif: jit.clif,
        asm: jit.asm,
        pool: Default::default(),
        sequential: false,
        _code: Some(jit.code),
    };
    let mut compiled = compiled;
    compiled.sequential = is_small(&compiled.steps);
    if flags.ir {
        dump::write(&compiled.id, "ir", &kiln_ir::text::print(graph));
    }
    if flags.sched {
        dump::write(&compiled.id, "sched", &compiled.schedule_text);
    }
    if flags.kernels {
        dump::write(&compiled.id, "kernels", &compiled.kernels_text());
    }
    if flags.clif {
        dump::write(&compiled.id, "clif", &compiled.clif.join("\n"));
    }
    if flags.asm {
        dump::write(&compiled.id, "asm", &compiled.asm.join("\n"));
    }
    Ok(compiled)
}

fn schedule_text(
    graph: &Graph,
    canon: &Canon,
    sched: &crate::schedule::Schedule,
    steps: &[Step],
    mem: &MemoryPlan,
    labels: &[usize],
    id: &str,
) -> String {
    let mut s = String::new();
    let node = |i: usize| {
        let n = graph.node(canon.order[i]);
        format!("%{} {} {}", labels[i], n.op.name(), n.ty)
    };
    let _ = writeln!(
        s,
        "program {id}: {} nodes, {} kernels, {} temporaries ({} bytes), {} results",
        canon.order.len(),
        steps.len(),
        mem.temps.len(),
        mem.temps.iter().sum::<usize>(),
        canon.wanted.len()
    );
    for (i, p) in sched.place.iter().enumerate() {
        let what = match p {
            Placement::Bound | Placement::Const | Placement::Kernel => {
                mem.storage[i].map_or("?".into(), |st| st.to_string())
            }
            Placement::Alias(o) => format!("alias of %{}", labels[*o]),
            Placement::Into(o) => format!("into %{} (epilogue)", labels[*o]),
            Placement::Inline => continue,
        };
        let _ = writeln!(s, "  {:<40} {what}", node(i));
    }
    for st in steps {
        let fused: Vec<String> = st
            .fused
            .iter()
            .filter(|&&f| f != st.root)
            .map(|&f| format!("%{}", labels[f]))
            .collect();
        let reads: Vec<String> = st
            .args
            .iter()
            .filter(|&&a| a != st.root)
            .map(|&a| format!("%{}", labels[a]))
            .collect();
        let _ = writeln!(
            s,
            "  {}: {} <- fused [{}] reads [{}]",
            st.kernel.name,
            node(st.root),
            fused.join(" "),
            reads.join(" ")
        );
    }
    s
}

impl Compiled {
    /// The kernel IR of every step, as text.
    pub(crate) fn kernels_text(&self) -> String {
        self.steps
            .iter()
            .map(|s| s.kernel.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs the compiled kernels (machine code) on type-checked inputs.
    fn run(&self, inputs: &[&Literal]) -> Result<Vec<Literal>> {
        let profile = dump::profile_enabled();
        let mut temps = self.pool.take(&self.mem.temps);
        let mut outputs: Vec<Data> = self
            .output_types
            .iter()
            .map(|t| Data::splat(t.dtype, 0.0, t.numel()))
            .collect();
        // Base addresses, taken once: from here until the kernels are done, the buffers are
        // only accessed through these.
        let input_raw: Vec<RawBuf> = inputs.iter().map(|l| raw_of(&l.data)).collect();
        let const_raw: Vec<RawBuf> = self.consts.iter().map(|l| raw_of(&l.data)).collect();
        let temp_raw: Vec<RawBuf> = temps
            .iter_mut()
            .zip(&self.mem.temps)
            .map(|(t, &bytes)| RawBuf {
                ptr: t.as_mut_ptr() as *mut u8,
                bytes,
            })
            .collect();
        let out_raw: Vec<RawBuf> = outputs.iter_mut().map(raw_of_mut).collect();
        let steps = || -> Result<Vec<Duration>> {
            let mut times = Vec::new();
            let bufs_of = |step: &Step| -> Result<Vec<RawBuf>> {
                step.args
                    .iter()
                    .map(|&a| match self.mem.storage[a] {
                        Some(Storage::Input(k)) => Ok(input_raw[k]),
                        Some(Storage::Const(k)) => Ok(const_raw[k]),
                        Some(Storage::Temp(k)) => Ok(temp_raw[k]),
                        Some(Storage::Output(k)) => Ok(out_raw[k]),
                        None => Err(internal(format!("node {a} has no storage"))),
                    })
                    .collect()
            };
            let mut i = 0;
            while i < self.steps.len() {
                let step = &self.steps[i];
                let bufs = bufs_of(step)?;
                let t0 = profile.then(Instant::now);
                match (step.fuse_next, self.steps.get(i + 1)) {
                    (Some(j), Some(epi)) if epi.func.is_some() => {
                        let ebufs = bufs_of(epi)?;
                        let ef = epi.func.ok_or_else(|| internal("epilogue not compiled"))?;
                        run_fused(&step.kernel, &step.prep, &bufs, &epi.kernel, ef, &ebufs, j)
                            .map_err(internal)?;
                        if let Some(t0) = t0 {
                            // The pair's time goes to the contraction; the epilogue shows 0.
                            times.push(t0.elapsed());
                            times.push(Duration::ZERO);
                        }
                        i += 2;
                        continue;
                    }
                    _ => {
                        run_kernel(&step.kernel, step.func, &step.prep, &bufs).map_err(internal)?
                    }
                }
                if let Some(t0) = t0 {
                    times.push(t0.elapsed());
                }
                i += 1;
            }
            Ok(times)
        };
        // Run the kernels on a thread of rayon's pool: a parallel kernel started from outside the
        // pool hands its work over and blocks on a latch (a futex wake-up and a wait per
        // kernel, tens of microseconds, most of a small step's time); from inside, its
        // threads just split the work. One hand-over per run instead of one per kernel.
        let times = if self.sequential && launch::small_programs_sequential() {
            launch::sequential(steps)
        } else if rayon::current_thread_index().is_none() && rayon::current_num_threads() > 1 {
            let job = OnPool(&steps);
            rayon::scope(move |_| job.call())
        } else {
            steps()
        }?;
        if profile {
            self.report_times(&times);
        }
        // Results: move each output array out at its last request, copy otherwise.
        let mut remaining: HashMap<usize, usize> = HashMap::new();
        for (_, owner) in &self.results {
            *remaining.entry(*owner).or_default() += 1;
        }
        let mut outs: Vec<Option<Data>> = outputs.into_iter().map(Some).collect();
        let mut res = Vec::with_capacity(self.results.len());
        for (ty, owner) in &self.results {
            let left = remaining.get_mut(owner).expect("counted above");
            *left -= 1;
            let data = match self.mem.storage[*owner] {
                Some(Storage::Output(k)) if *left == 0 => outs[k].take(),
                Some(Storage::Output(k)) => outs[k].clone(),
                Some(Storage::Input(k)) => Some(inputs[k].data.clone()),
                Some(Storage::Const(k)) => Some(self.consts[k].data.clone()),
                Some(Storage::Temp(k)) => {
                    let oty = &self.owner_types[owner];
                    Some(read_words(&temps[k], oty.dtype, oty.numel()))
                }
                None => None,
            }
            .ok_or_else(|| internal("a result has no value"))?;
            res.push(Literal {
                shape: ty.shape.clone(),
                data,
            });
        }
        self.pool.give(temps);
        Ok(res)
    }

    /// Runs the kernels in the bounds-checked kernel IR interpreter, one buffer per node.
    fn run_interpreted(&self, inputs: &[&Literal]) -> Result<Vec<Literal>> {
        let mut bufs: HashMap<usize, Data> = HashMap::new();
        for (k, &i) in self.mem.inputs.iter().enumerate() {
            bufs.insert(i, inputs[k].data.clone());
        }
        for (k, &i) in self.mem.consts.iter().enumerate() {
            bufs.insert(i, self.consts[k].data.clone());
        }
        for step in &self.steps {
            let mut args: Vec<Data> = Vec::with_capacity(step.args.len());
            for (p, &a) in step.kernel.params.iter().zip(&step.args) {
                let d = bufs
                    .remove(&a)
                    .unwrap_or_else(|| Data::splat(p.dtype, 0.0, p.len as usize));
                args.push(d);
            }
            let r = kernel::interp::run(&step.kernel, &mut args);
            for (&a, d) in step.args.iter().zip(args) {
                bufs.insert(a, d);
            }
            r.map_err(|e| internal(format!("{e}\n{}", step.kernel)))?;
        }
        self.results
            .iter()
            .map(|(ty, owner)| {
                let data = bufs
                    .get(owner)
                    .cloned()
                    .ok_or_else(|| internal("a result has no value"))?;
                Ok(Literal {
                    shape: ty.shape.clone(),
                    data,
                })
            })
            .collect()
    }

    fn report_times(&self, times: &[std::time::Duration]) {
        let total: f64 = times.iter().map(|t| t.as_secs_f64()).sum();
        let mut s = format!(
            "program {}: {:.3} ms in {} kernels\n",
            self.id,
            total * 1e3,
            times.len()
        );
        let _ = writeln!(
            s,
            "  {:<28} {:>10} {:>6} {:>12}",
            "kernel", "µs", "%", "iterations"
        );
        for (st, t) in self.steps.iter().zip(times) {
            let us = t.as_secs_f64() * 1e6;
            let _ = writeln!(
                s,
                "  {:<28} {:>10.1} {:>6.1} {:>12}",
                st.kernel.name,
                us,
                if total > 0.0 {
                    100.0 * t.as_secs_f64() / total
                } else {
                    0.0
                },
                st.kernel.work()
            );
        }
        dump::report("kiln profile", &s);
    }
}

fn raw_of(d: &Data) -> RawBuf {
    let (ptr, bytes) = match d {
        Data::F32(v) => (v.as_ptr() as *const u8, v.len() * 4),
        Data::F64(v) => (v.as_ptr() as *const u8, v.len() * 8),
        Data::I64(v) => (v.as_ptr() as *const u8, v.len() * 8),
        Data::Bool(v) => (v.as_ptr() as *const u8, v.len()),
    };
    // Read-only buffers: `run_kernel` refuses to let a kernel write them.
    RawBuf {
        ptr: ptr as *mut u8,
        bytes,
    }
}

fn raw_of_mut(d: &mut Data) -> RawBuf {
    let (ptr, bytes) = match d {
        Data::F32(v) => (v.as_mut_ptr() as *mut u8, v.len() * 4),
        Data::F64(v) => (v.as_mut_ptr() as *mut u8, v.len() * 8),
        Data::I64(v) => (v.as_mut_ptr() as *mut u8, v.len() * 8),
        Data::Bool(v) => (v.as_mut_ptr() as *mut u8, v.len()),
    };
    RawBuf { ptr, bytes }
}

/// The first `n` elements of `dtype` stored in `words` (native byte order).
fn read_words(words: &[u64], dtype: kiln_ir::DType, n: usize) -> Data {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match dtype {
        kiln_ir::DType::F32 => Data::F32(
            bytes
                .chunks_exact(4)
                .take(n)
                .map(|c| f32::from_ne_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        ),
        kiln_ir::DType::F64 => Data::F64(
            bytes
                .chunks_exact(8)
                .take(n)
                .map(|c| f64::from_ne_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        kiln_ir::DType::I64 => Data::I64(
            bytes
                .chunks_exact(8)
                .take(n)
                .map(|c| i64::from_ne_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        kiln_ir::DType::Bool => Data::Bool(bytes.iter().take(n).map(|&b| b != 0).collect()),
    }
}

/// Checks that `lit` is a consistent value of type `ty` for node `id`.
fn check_binding(id: NodeId, lit: &Literal, ty: &TensorType) -> Result<()> {
    if lit.data.len() != numel(&lit.shape) {
        return Err(IrError::Eval(format!(
            "the binding of %{} has shape {:?} but holds {} elements",
            id.index(),
            lit.shape,
            lit.data.len()
        )));
    }
    if lit.ty() != *ty {
        return Err(IrError::Eval(format!(
            "%{} has type {ty} but is bound to a value of type {}",
            id.index(),
            lit.ty()
        )));
    }
    Ok(())
}

impl Program {
    /// Compiles the nodes `wanted` of `graph`, the nodes `bound` being given at run time (every
    /// needed `input`/`param` must be among them; any other node may be, and its operands are
    /// then not needed). Structurally identical graphs share one compiled program
    /// ([`crate::cache`]).
    pub fn compile(graph: &Graph, wanted: &[NodeId], bound: &[NodeId]) -> Result<Program> {
        for &b in bound {
            if !graph.contains(b) {
                return Err(IrError::Eval(format!(
                    "a value is bound to %{}, which is not a node of the graph",
                    b.index()
                )));
            }
        }
        let bound_set: HashSet<NodeId> = bound.iter().copied().collect();
        let canon = canonicalize(graph, wanted, &bound_set)?;
        let compiled = crate::cache::get_or_compile(graph, &canon)?;
        let input_nodes: Vec<NodeId> = compiled
            .input_canon
            .iter()
            .map(|&i| canon.order[i])
            .collect();
        // Bound nodes the program does not read: not needed, or made unneeded by the passes.
        let used: HashSet<NodeId> = input_nodes.iter().copied().collect();
        let unused_bound = bound
            .iter()
            .filter(|b| !used.contains(b))
            .map(|&b| (b, graph.ty(b).clone()))
            .collect();
        Ok(Program {
            compiled,
            input_nodes,
            unused_bound,
        })
    }

    /// The inputs in storage order, after checking every binding.
    pub(crate) fn inputs<'a>(
        &self,
        bindings: &HashMap<NodeId, &'a Literal>,
    ) -> Result<Vec<&'a Literal>> {
        let mut sorted: Vec<(&NodeId, &&Literal)> = bindings.iter().collect();
        sorted.sort_by_key(|(id, _)| **id);
        for (&id, &lit) in sorted {
            if let Some(ty) = self.unused_bound.get(&id) {
                check_binding(id, lit, ty)?;
            } else if !self.input_nodes.contains(&id) {
                return Err(IrError::Eval(format!(
                    "%{} is bound but was not declared bound when the program was compiled",
                    id.index()
                )));
            }
        }
        self.input_nodes
            .iter()
            .zip(&self.compiled.input_types)
            .map(|(id, ty)| {
                let lit = bindings.get(id).ok_or_else(|| {
                    IrError::Eval(format!("%{} of type {ty} is not bound", id.index()))
                })?;
                check_binding(*id, lit, ty)?;
                Ok(*lit)
            })
            .collect()
    }

    /// Runs the program: the values of the wanted nodes, in the order asked.
    pub fn run(&self, bindings: &HashMap<NodeId, &Literal>) -> Result<Vec<Literal>> {
        let inputs = self.inputs(bindings)?;
        self.compiled.run(&inputs)
    }

    /// Runs the program's kernels in the bounds-checked kernel IR interpreter instead of the
    /// machine code (for tests: an error instead of a wrong access).
    pub fn run_interpreted(&self, bindings: &HashMap<NodeId, &Literal>) -> Result<Vec<Literal>> {
        let inputs = self.inputs(bindings)?;
        self.compiled.run_interpreted(&inputs)
    }

    /// The kernels, in execution order.
    pub fn kernels(&self) -> impl Iterator<Item = &Kernel> {
        self.compiled.steps.iter().map(|s| &s.kernel)
    }

    /// The kernel IR of every kernel, as text.
    pub fn kernels_text(&self) -> String {
        self.compiled.kernels_text()
    }

    /// Which nodes each kernel computes and where every buffer lives, as text.
    pub fn schedule_text(&self) -> &str {
        &self.compiled.schedule_text
    }

    /// What the graph passes did when this program was compiled (`None` when they were not
    /// run: `KILN_PASSES=0`, or they failed and the graph was compiled as given).
    pub fn pass_report(&self) -> Option<&PassReport> {
        self.compiled.passes.as_ref()
    }

    /// A short id of the program's structural key (used in dump file names).
    pub fn id(&self) -> &str {
        &self.compiled.id
    }

    /// The compiled program as cached (shared by structurally identical graphs); the GPU
    /// backend builds its programs from it.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn compiled(&self) -> &Arc<Compiled> {
        &self.compiled
    }
}
