//! The program cache: structurally identical graphs share one compiled program.
//!
//! Keyed by the canonical structural key of [`crate::canon`] (compared in full, so a hash
//! collision cannot hand out the wrong program). A training loop that rebuilds its step graph
//! every iteration compiles it once. Counters of hits and misses are kept for tests and
//! profiling.

use crate::canon::Canon;
use crate::program::{compile_canonical, Compiled};
use kiln_ir::{Graph, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Beyond this many programs the cache starts over (a crude bound on memory).
const MAX_PROGRAMS: usize = 512;

static HITS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);

fn cache() -> &'static Mutex<HashMap<Vec<u8>, Arc<Compiled>>> {
    static CACHE: OnceLock<Mutex<HashMap<Vec<u8>, Arc<Compiled>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Hits and misses of the program cache since the process started (or [`clear`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// The cache's counters.
pub fn stats() -> CacheStats {
    CacheStats {
        hits: HITS.load(Ordering::Relaxed),
        misses: MISSES.load(Ordering::Relaxed),
    }
}

/// Empties the cache (counters are kept).
pub fn clear() {
    cache().lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The compiled program for `canon`, compiling it on a miss.
pub(crate) fn get_or_compile(graph: &Graph, canon: &Canon) -> Result<Arc<Compiled>> {
    if let Some(c) = cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&canon.key)
    {
        HITS.fetch_add(1, Ordering::Relaxed);
        return Ok(c.clone());
    }
    MISSES.fetch_add(1, Ordering::Relaxed);
    // Compiled outside the lock, so threads compiling different programs do not wait.
    let compiled = Arc::new(compile_canonical(graph, canon)?);
    let mut map = cache().lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_PROGRAMS {
        log::debug!("program cache full ({MAX_PROGRAMS}): starting over");
        map.clear();
    }
    Ok(map.entry(canon.key.clone()).or_insert(compiled).clone())
}
