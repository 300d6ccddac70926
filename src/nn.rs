//! Layers as graph builders (the minimal set the tutorial's first part needs; the full `nn`
//! library — modules with train/eval, batch norm, dropout, state dicts — is built on the same
//! pattern).
//!
//! A layer owns its parameters as leaf tensors that require grad; `forward` traces ops on them.
//! Initialisation follows PyTorch's defaults: Kaiming-uniform weights with `a = sqrt(5)`, i.e.
//! `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, and biases from the same bound.

use crate::functional::{self as F, ConvOpts};
use crate::random::Generator;
use crate::tensor::Tensor;
use kiln_ir::DType;

/// Something with named parameters (PyTorch's `nn.Module` in its smallest form).
pub trait Module {
    /// Parameters with PyTorch's dotted names (`conv1.weight`), in registration order.
    fn named_parameters(&self) -> Vec<(String, Tensor)>;

    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// Number of scalar parameters.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|p| p.numel()).sum()
    }

    /// Clears every parameter's gradient.
    fn zero_grad(&self) {
        for p in self.parameters() {
            p.zero_grad();
        }
    }
}

fn uniform(shape: &[usize], bound: f64, g: &mut Generator) -> Tensor {
    let u = Tensor::rand_with(shape.to_vec(), DType::F32, g);
    let lit = u.literal().expect("random tensors are realised");
    let v: Vec<f32> = lit
        .data
        .to_f64_vec()
        .iter()
        .map(|&x| ((2.0 * x - 1.0) * bound) as f32)
        .collect();
    Tensor::from_vec(v, shape.to_vec()).requires_grad_(true)
}

/// `y = x W^T + b` (`nn.Linear`).
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize, bias: bool, g: &mut Generator) -> Linear {
        let bound = 1.0 / (in_features as f64).sqrt();
        let weight = uniform(&[out_features, in_features], bound, g);
        let bias = bias.then(|| uniform(&[out_features], bound, g));
        Linear { weight, bias }
    }

    #[track_caller]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        F::linear(x, &self.weight, self.bias.as_ref())
    }
}

impl Module for Linear {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias".to_string(), b.clone()));
        }
        v
    }
}

/// 2-D convolution layer (`nn.Conv2d`) with stride 1 and the given padding.
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub padding: usize,
}

impl Conv2d {
    pub fn new(cin: usize, cout: usize, kernel: usize, g: &mut Generator) -> Conv2d {
        let fan_in = cin * kernel * kernel;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let weight = uniform(&[cout, cin, kernel, kernel], bound, g);
        let bias = Some(uniform(&[cout], bound, g));
        Conv2d {
            weight,
            bias,
            padding: 0,
        }
    }

    #[track_caller]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let opts = ConvOpts {
            padding: &[self.padding],
            ..Default::default()
        };
        F::conv2d(x, &self.weight, self.bias.as_ref(), &opts)
    }
}

impl Module for Conv2d {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias".to_string(), b.clone()));
        }
        v
    }
}

fn prefixed(prefix: &str, m: &dyn Module) -> Vec<(String, Tensor)> {
    m.named_parameters()
        .into_iter()
        .map(|(n, t)| (format!("{prefix}.{n}"), t))
        .collect()
}

/// The tutorial's LeNet: 1x32x32 input, conv 1->6 k3, max-pool 2, conv 6->16 k3, max-pool 2,
/// 576 -> 120 -> 84 -> 10 with ReLU; 81,194 parameters.
pub struct LeNet {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc1: Linear,
    pub fc2: Linear,
    pub fc3: Linear,
}

impl LeNet {
    pub fn new(g: &mut Generator) -> LeNet {
        let net = LeNet {
            conv1: Conv2d::new(1, 6, 3, g),
            conv2: Conv2d::new(6, 16, 3, g),
            fc1: Linear::new(16 * 6 * 6, 120, true, g),
            fc2: Linear::new(120, 84, true, g),
            fc3: Linear::new(84, 10, true, g),
        };
        for (name, p) in net.named_parameters() {
            p.set_name(name);
        }
        net
    }

    #[track_caller]
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let pool = F::PoolOpts::kernel(&[2]);
        let x = F::max_pool2d(&self.conv1.forward(x).relu(), &pool);
        let x = F::max_pool2d(&self.conv2.forward(&x).relu(), &pool);
        let x = x.flatten(1, -1);
        let x = self.fc1.forward(&x).relu();
        let x = self.fc2.forward(&x).relu();
        self.fc3.forward(&x)
    }
}

impl Module for LeNet {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = prefixed("conv1", &self.conv1);
        v.extend(prefixed("conv2", &self.conv2));
        v.extend(prefixed("fc1", &self.fc1));
        v.extend(prefixed("fc2", &self.fc2));
        v.extend(prefixed("fc3", &self.fc3));
        v
    }
}
