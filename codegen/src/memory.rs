//! Buffer planning by liveness.
//!
//! Every node with a buffer of its own gets a storage: the caller's value (bound nodes), the
//! program's constant, a fresh output array (wanted nodes computed by a kernel, handed to the
//! caller without a copy), or a temporary. Temporaries live from the kernel that writes them
//! to the last kernel that reads them; a temporary slot freed by an earlier value is reused
//! when it is at least as large (the smallest such), so peak memory follows the live set
//! rather than the graph. A kernel's output slot is chosen before its inputs are released, so
//! a kernel never writes the memory it reads. The temporaries of a run are kept for the
//! next one ([`TempPool`]).

use crate::canon::Canon;
use crate::schedule::{Placement, Schedule};
use kiln_ir::Graph;
use std::fmt;

/// Where a buffer lives at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// The caller's binding number `k` (in [`MemoryPlan::inputs`] order).
    Input(usize),
    /// The program's constant number `k`.
    Const(usize),
    /// Temporary slot `k`.
    Temp(usize),
    /// Result array `k`, handed to the caller.
    Output(usize),
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Input(k) => write!(f, "input{k}"),
            Storage::Const(k) => write!(f, "const{k}"),
            Storage::Temp(k) => write!(f, "temp{k}"),
            Storage::Output(k) => write!(f, "out{k}"),
        }
    }
}

/// The storage of every buffer of a program.
#[derive(Clone, Debug, Default)]
pub struct MemoryPlan {
    /// Per canonical node that owns a buffer.
    pub storage: Vec<Option<Storage>>,
    /// Size in bytes of each temporary slot.
    pub temps: Vec<usize>,
    /// Canonical node of each input, constant and output storage.
    pub inputs: Vec<usize>,
    pub consts: Vec<usize>,
    pub outputs: Vec<usize>,
}

/// Plans storage for a program whose kernels, in order, write `steps[i].0` and use the
/// buffers of the nodes `steps[i].1`.
pub fn plan(
    graph: &Graph,
    canon: &Canon,
    sched: &Schedule,
    steps: &[(usize, Vec<usize>)],
) -> MemoryPlan {
    let n = canon.order.len();
    let bytes = |i: usize| {
        let ty = &graph.node(canon.order[i]).ty;
        ty.numel() * ty.dtype.size_of()
    };
    let mut p = MemoryPlan {
        storage: vec![None; n],
        ..MemoryPlan::default()
    };
    let mut wanted_owner = vec![false; n];
    for &w in &canon.wanted {
        if let Some(o) = sched.owner(w) {
            wanted_owner[o] = true;
        }
    }
    for i in 0..n {
        match sched.place[i] {
            Placement::Bound => {
                p.storage[i] = Some(Storage::Input(p.inputs.len()));
                p.inputs.push(i);
            }
            Placement::Const => {
                p.storage[i] = Some(Storage::Const(p.consts.len()));
                p.consts.push(i);
            }
            Placement::Kernel if canon.wanted.contains(&i) => {
                p.storage[i] = Some(Storage::Output(p.outputs.len()));
                p.outputs.push(i);
            }
            _ => {}
        }
    }
    // Last step reading each buffer; owners of wanted aliases live to the end.
    let mut last = vec![0usize; n];
    for (s, (root, args)) in steps.iter().enumerate() {
        last[*root] = last[*root].max(s);
        for &a in args {
            last[a] = last[a].max(s);
        }
    }
    for (i, w) in wanted_owner.iter().enumerate() {
        if *w {
            last[i] = usize::MAX;
        }
    }
    let mut free: Vec<usize> = Vec::new();
    for (s, (root, args)) in steps.iter().enumerate() {
        let r = *root;
        if p.storage[r].is_none() {
            let need = bytes(r);
            let pick = free
                .iter()
                .enumerate()
                .filter(|(_, &t)| p.temps[t] >= need)
                .min_by_key(|(_, &t)| p.temps[t])
                .map(|(k, _)| k);
            let slot = match pick {
                Some(k) => free.swap_remove(k),
                None => {
                    p.temps.push(need);
                    p.temps.len() - 1
                }
            };
            p.storage[r] = Some(Storage::Temp(slot));
        }
        let mut done: Vec<usize> = args.iter().copied().filter(|&a| last[a] == s).collect();
        if last[r] == s {
            done.push(r);
        }
        done.sort();
        done.dedup();
        for a in done {
            if let Some(Storage::Temp(t)) = p.storage[a] {
                free.push(t);
            }
        }
    }
    p
}

/// Sets of temporaries kept between runs of one program, so that a training step does not
/// allocate (and page-fault in, on first touch) its temporaries every time.
///
/// A run takes a set ([`TempPool::take`]) and hands it back when done ([`TempPool::give`]).
/// Runs from several threads at once each get a set of their own: when none is free, a
/// fresh one is allocated, and at most [`TempPool::KEEP`] sets are kept, bounding the memory
/// a program holds while idle. Kernels never rely on a temporary's initial contents (within
/// a run the slots are already reused by later values), so a set is handed out as it was
/// left.
#[derive(Debug, Default)]
pub struct TempPool {
    free: std::sync::Mutex<Vec<Vec<Vec<u64>>>>,
}

impl TempPool {
    /// The most sets kept while no run holds them.
    pub const KEEP: usize = 2;

    /// A set of temporaries of `bytes[k]` bytes each (rounded up to whole 8-byte words).
    pub fn take(&self, bytes: &[usize]) -> Vec<Vec<u64>> {
        let fits = |set: &Vec<Vec<u64>>| {
            set.len() == bytes.len()
                && set
                    .iter()
                    .zip(bytes)
                    .all(|(t, &b)| t.len() == b.div_ceil(8))
        };
        // A poisoned lock only means another run panicked while pushing or popping: the
        // vector itself is intact.
        let pooled = match self.free.lock() {
            Ok(mut free) => free.pop(),
            Err(poisoned) => poisoned.into_inner().pop(),
        };
        match pooled {
            Some(set) if fits(&set) => set,
            _ => bytes.iter().map(|&b| vec![0u64; b.div_ceil(8)]).collect(),
        }
    }

    /// Returns a set taken with [`TempPool::take`] for later runs.
    pub fn give(&self, set: Vec<Vec<u64>>) {
        let mut free = match self.free.lock() {
            Ok(free) => free,
            Err(poisoned) => poisoned.into_inner(),
        };
        if free.len() < Self::KEEP {
            free.push(set);
        }
    }
}
