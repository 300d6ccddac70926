//! `Sequential`: modules applied in order.

use super::module::Module;
use crate::tensor::Tensor;

/// Applies its modules in order (`nn.Sequential`); they are named `0`, `1`, ... as in PyTorch,
/// so the state dict of `Sequential[Linear, ReLU, Linear]` is `0.weight, 0.bias, 2.weight,
/// 2.bias`. The modules are boxed (a list of different types); each module's own forward is
/// statically dispatched inside it.
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
    training: bool,
}

impl Default for Sequential {
    fn default() -> Self {
        Sequential {
            layers: Vec::new(),
            training: true,
        }
    }
}

impl Sequential {
    pub fn new() -> Sequential {
        Sequential::default()
    }

    /// Appends a module (builder form, PyTorch's `append`) and renames the tensors to their new
    /// dotted paths.
    pub fn append(mut self, m: impl Module + 'static) -> Sequential {
        self.push(m);
        self
    }

    /// Appends a module, in the mode of the container, and renames the tensors.
    pub fn push(&mut self, m: impl Module + 'static) {
        let mut m: Box<dyn Module> = Box::new(m);
        m.set_training(self.training);
        self.layers.push(m);
        self.name_tensors();
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&dyn Module> {
        self.layers.get(i).map(|b| b.as_ref())
    }
}

impl Module for Sequential {
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = x.clone();
        for m in &self.layers {
            y = m.forward(&y);
        }
        y
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, m)| (i.to_string(), m.as_ref()))
            .collect()
    }

    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        self.layers
            .iter_mut()
            .enumerate()
            .map(|(i, m)| (i.to_string(), m.as_mut() as &mut dyn Module))
            .collect()
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_local_training(&mut self, training: bool) {
        self.training = training;
    }
}
