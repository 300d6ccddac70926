//! Max and average pooling over 1, 2 or 3 spatial axes.

use super::conv::Axes;
use super::module::Module;
use crate::error::Result;
use crate::functional::{self as F, PoolOpts};
use crate::tensor::Tensor;

/// Max pooling (`nn.MaxPool1d/2d/3d`): the largest value of each window; the stride defaults
/// to the kernel size, padding pads with `-inf`. The gradient goes to the first maximum of a
/// window, and NaN propagates, as in PyTorch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaxPool<const N: usize> {
    pub kernel_size: [usize; N],
    pub stride: [usize; N],
    pub padding: [usize; N],
    pub dilation: [usize; N],
}

pub type MaxPool1d = MaxPool<1>;
pub type MaxPool2d = MaxPool<2>;
pub type MaxPool3d = MaxPool<3>;

impl<const N: usize> MaxPool<N> {
    /// Kernel `k`, stride `k`, no padding. Sizes are checked when the layer is applied.
    pub fn new(kernel_size: impl Axes<N>) -> Self {
        let k = kernel_size.axes();
        MaxPool {
            kernel_size: k,
            stride: k,
            padding: [0; N],
            dilation: [1; N],
        }
    }
    pub fn stride(mut self, s: impl Axes<N>) -> Self {
        self.stride = s.axes();
        self
    }
    pub fn padding(mut self, p: impl Axes<N>) -> Self {
        self.padding = p.axes();
        self
    }
    pub fn dilation(mut self, d: impl Axes<N>) -> Self {
        self.dilation = d.axes();
        self
    }

    /// The forward pass, or an error for a zero size, padding above half the kernel, or an
    /// input smaller than the kernel.
    #[track_caller]
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        let o = PoolOpts {
            kernel_size: &self.kernel_size,
            stride: &self.stride,
            padding: &self.padding,
            dilation: &self.dilation,
        };
        F::try_max_pool(x, N, &o)
    }
}

impl<const N: usize> Module for MaxPool<N> {
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Average pooling (`nn.AvgPool1d/2d/3d`) with PyTorch's defaults: the stride defaults to the
/// kernel size, and zero padding counts in the divisor (`count_include_pad=True`), so every
/// window is divided by the kernel volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvgPool<const N: usize> {
    pub kernel_size: [usize; N],
    pub stride: [usize; N],
    pub padding: [usize; N],
}

pub type AvgPool1d = AvgPool<1>;
pub type AvgPool2d = AvgPool<2>;
pub type AvgPool3d = AvgPool<3>;

impl<const N: usize> AvgPool<N> {
    /// Kernel `k`, stride `k`, no padding. Sizes are checked when the layer is applied.
    pub fn new(kernel_size: impl Axes<N>) -> Self {
        let k = kernel_size.axes();
        AvgPool {
            kernel_size: k,
            stride: k,
            padding: [0; N],
        }
    }
    pub fn stride(mut self, s: impl Axes<N>) -> Self {
        self.stride = s.axes();
        self
    }
    pub fn padding(mut self, p: impl Axes<N>) -> Self {
        self.padding = p.axes();
        self
    }

    #[track_caller]
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        let o = PoolOpts {
            kernel_size: &self.kernel_size,
            stride: &self.stride,
            padding: &self.padding,
            dilation: &[1],
        };
        F::try_avg_pool(x, N, &o)
    }
}

impl<const N: usize> Module for AvgPool<N> {
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }
}
