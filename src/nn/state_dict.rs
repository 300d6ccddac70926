//! [`StateDict`]: an ordered map from PyTorch's dotted names to tensors.

use crate::tensor::Tensor;
use indexmap::IndexMap;
use std::collections::BTreeMap;
use std::fmt;

/// Parameters and buffers by dotted name (`conv1.weight`, `bn1.running_mean`), in the order the
/// module registered them: what `Module::state_dict` returns, `Module::load_state_dict` reads,
/// and [`crate::checkpoint`] saves and loads.
///
/// It also carries free-form string metadata (saved as the safetensors header's
/// `__metadata__`, e.g. an epoch number) and, when it was read from a file, that file's path,
/// so that an error in loading it names the file.
#[derive(Clone, Default)]
pub struct StateDict {
    entries: IndexMap<String, Tensor>,
    metadata: BTreeMap<String, String>,
    source: Option<String>,
}

impl StateDict {
    pub fn new() -> StateDict {
        StateDict::default()
    }

    /// Inserts (or replaces, keeping its position) the tensor named `name`; returns the old one.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        self.entries.insert(name.into(), tensor)
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.get(name)
    }

    /// Removes `name`, keeping the order of the others.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.entries.shift_remove(name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// `(name, tensor)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Total number of scalars held.
    pub fn numel(&self) -> usize {
        self.entries.values().map(Tensor::numel).sum()
    }

    /// The entries under `prefix.`, with the prefix removed: the state of a sub-module, or a
    /// checkpoint's `param.*` or `module.*` tensors.
    pub fn sub(&self, prefix: &str) -> StateDict {
        let p = format!("{prefix}.");
        StateDict {
            entries: self
                .entries
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(&p).map(|s| (s.to_string(), v.clone())))
                .collect(),
            metadata: self.metadata.clone(),
            source: self.source.clone(),
        }
    }

    /// Every name prefixed by `prefix.` (the inverse of [`StateDict::sub`]).
    pub fn prefixed(&self, prefix: &str) -> StateDict {
        StateDict {
            entries: self
                .entries
                .iter()
                .map(|(k, v)| (format!("{prefix}.{k}"), v.clone()))
                .collect(),
            metadata: self.metadata.clone(),
            source: self.source.clone(),
        }
    }

    /// String metadata, saved in the safetensors header.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn metadata_mut(&mut self) -> &mut BTreeMap<String, String> {
        &mut self.metadata
    }

    /// The file this state was read from, if any (used in error messages).
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    pub fn set_source(&mut self, source: Option<String>) {
        self.source = source;
    }
}

impl FromIterator<(String, Tensor)> for StateDict {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(iter: I) -> StateDict {
        StateDict {
            entries: iter.into_iter().collect(),
            ..StateDict::default()
        }
    }
}

impl IntoIterator for StateDict {
    type Item = (String, Tensor);
    type IntoIter = indexmap::map::IntoIter<String, Tensor>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a> IntoIterator for &'a StateDict {
    type Item = (&'a String, &'a Tensor);
    type IntoIter = indexmap::map::Iter<'a, String, Tensor>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

impl fmt::Debug for StateDict {
    /// Names, dtypes and shapes (not values: a state can hold millions of them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.entries {
            m.entry(k, &format_args!("{} {:?}", v.dtype(), v.shape()));
        }
        m.finish()
    }
}
