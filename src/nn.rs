//! Layers and models as graph builders (`torch.nn`).
//!
//! A [`Module`] owns parameters (leaf tensors that require grad, named with PyTorch's dotted
//! paths such as `conv1.weight`) and buffers (`bn1.running_mean`); its `forward` records ops on
//! them, so calling a model traces the graph that autograd differentiates and a compiled step
//! replays. Modules have PyTorch's training/evaluation modes, state dicts with PyTorch's names
//! and layouts (saved and loaded by [`crate::checkpoint`]), and PyTorch's default
//! initialisation, drawn from an explicit [`crate::Generator`] so that a seed reproduces a
//! network.
//!
//! | module | layers |
//! |---|---|
//! | [`module`] | the [`Module`] trait, [`LoadReport`] |
//! | [`linear`] | [`Linear`], [`Flatten`], [`Identity`] |
//! | [`conv`] | [`Conv1d`]/[`Conv2d`]/[`Conv3d`], [`ConvTranspose1d`]/[`ConvTranspose2d`]/[`ConvTranspose3d`], [`ConvOptions`] |
//! | [`pool`] | [`MaxPool1d`]/2d/3d, [`AvgPool1d`]/2d/3d |
//! | [`norm`] | [`BatchNorm1d`]/[`BatchNorm2d`]/[`BatchNorm3d`] |
//! | [`dropout`] | [`Dropout`] |
//! | [`activation`] | [`ReLU`], [`LeakyReLU`], [`Sigmoid`], [`Tanh`], [`Softmax`], [`LogSoftmax`], [`GELU`], [`Activation`] |
//! | [`container`] | [`Sequential`] |
//! | [`init`] | `uniform_`, `normal_`, `zeros_`, `kaiming_uniform_`, `xavier_uniform_`, ... |
//! | [`models`] | the tutorial's [`LeNet`] and [`UNet3d`] |
//!
//! ```
//! use kiln::nn::{LeNet, Module};
//! let mut g = kiln::Generator::new(0);
//! let net = LeNet::new(&mut g);
//! assert_eq!(net.num_parameters(), 81_194);
//! assert_eq!(net.named_parameters()[0].0, "conv1.weight");
//! let y = net.forward(&kiln::Tensor::zeros([2, 1, 32, 32]));
//! assert_eq!(y.shape(), &[2, 10]);
//! ```

pub mod activation;
pub mod container;
pub mod conv;
pub mod dropout;
pub mod init;
pub mod linear;
pub mod models;
pub mod module;
pub mod norm;
pub mod pool;
mod state_dict;

pub use activation::{
    Activation, GeluApproximate, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh, GELU,
};
pub use container::Sequential;
pub use conv::{
    Axes, Conv, Conv1d, Conv2d, Conv3d, ConvOptions, ConvTranspose, ConvTranspose1d,
    ConvTranspose2d, ConvTranspose3d,
};
pub use dropout::Dropout;
pub use linear::{Flatten, Identity, Linear};
pub use models::{LeNet, UNet3d, UNet3dOptions};
pub use module::{LoadReport, Module};
pub use norm::{BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d};
pub use pool::{
    AvgPool, AvgPool1d, AvgPool2d, AvgPool3d, MaxPool, MaxPool1d, MaxPool2d, MaxPool3d,
};
pub use state_dict::StateDict;
