//! The module cache: one loaded module per distinct PTX text and device.
//!
//! Keyed by a 64-bit hash of the text ([`ptx_key`]); the text is kept and compared on a hit,
//! so a hash collision loads a second module instead of handing out the wrong one. The same
//! kernel emitted by two programs (an elementwise kernel shared by many graphs, say) is loaded
//! once. Modules are never unloaded: they live as long as their device (the process).
//!
//! [`ModuleCache`] is generic over what a load produces, so its keying is tested without a GPU.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// The cache key of a PTX text: FNV-1a over its bytes (stable across runs and platforms, so
/// it can be logged and compared between processes).
pub fn ptx_key(text: &str) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    text.hash(&mut h);
    h.finish()
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The texts with one key and what was loaded from each.
type Entries<M> = Vec<(Arc<str>, Arc<M>)>;

/// Loaded modules by PTX text.
pub struct ModuleCache<M> {
    map: Mutex<HashMap<u64, Entries<M>>>,
    key: fn(&str) -> u64,
}

impl<M> Default for ModuleCache<M> {
    fn default() -> Self {
        ModuleCache::with_key(ptx_key)
    }
}

impl<M> ModuleCache<M> {
    /// A cache hashing texts with `key` (tests pass a colliding one).
    pub fn with_key(key: fn(&str) -> u64) -> Self {
        ModuleCache {
            map: Mutex::new(HashMap::new()),
            key,
        }
    }

    /// The module loaded from `text`, calling `load` on a miss. Loads run outside the lock
    /// (the JIT compile of a big module takes a while); if two threads load the same text at
    /// once, the first to finish is kept and both get it.
    pub fn get_or_load<E>(
        &self,
        text: &str,
        load: impl FnOnce(&str) -> Result<M, E>,
    ) -> Result<Arc<M>, E> {
        let key = (self.key)(text);
        if let Some(m) = self.find(key, text) {
            return Ok(m);
        }
        let loaded = Arc::new(load(text)?);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let entries = map.entry(key).or_default();
        if let Some((_, m)) = entries.iter().find(|(t, _)| &**t == text) {
            return Ok(m.clone());
        }
        entries.push((Arc::from(text), loaded.clone()));
        Ok(loaded)
    }

    fn find(&self, key: u64, text: &str) -> Option<Arc<M>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key)?
            .iter()
            .find(|(t, _)| &**t == text)
            .map(|(_, m)| m.clone())
    }

    /// Number of modules held.
    pub fn len(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn the_key_is_a_stable_hash_of_the_text() {
        assert_eq!(ptx_key("abc"), ptx_key("abc"));
        assert_ne!(ptx_key("abc"), ptx_key("abd"));
        assert_ne!(ptx_key(""), ptx_key(" "));
        // A function of the text only, not of where it is stored.
        assert_eq!(ptx_key("abc"), ptx_key(&(String::from("ab") + "c")));
    }

    #[test]
    fn each_text_is_loaded_once() {
        let cache = ModuleCache::default();
        let loads = Cell::new(0);
        let load = |t: &str| -> Result<String, ()> {
            loads.set(loads.get() + 1);
            Ok(t.to_uppercase())
        };
        let a = cache.get_or_load("a", load).unwrap();
        let a2 = cache.get_or_load("a", load).unwrap();
        let b = cache.get_or_load("b", load).unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        assert_eq!((a.as_str(), b.as_str()), ("A", "B"));
        assert_eq!(loads.get(), 2);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn colliding_texts_get_their_own_modules() {
        let cache = ModuleCache::with_key(|_| 7);
        let x = cache
            .get_or_load("x", |t| Ok::<_, ()>(t.to_string()))
            .unwrap();
        let y = cache
            .get_or_load("y", |t| Ok::<_, ()>(t.to_string()))
            .unwrap();
        assert_eq!((x.as_str(), y.as_str()), ("x", "y"));
        let x2 = cache.get_or_load("x", |_| Err(())).unwrap();
        assert!(Arc::ptr_eq(&x, &x2));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_failed_load_is_not_cached() {
        let cache: ModuleCache<String> = ModuleCache::default();
        assert_eq!(cache.get_or_load("bad", |_| Err("no")), Err("no"));
        assert!(cache.is_empty());
        let ok = cache.get_or_load("bad", |_| Ok::<_, ()>("ok".to_string()));
        assert_eq!(ok.unwrap().as_str(), "ok");
    }
}
