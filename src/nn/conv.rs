//! Convolutions and transposed convolutions over 1, 2 or 3 spatial axes.

use super::init::uniform_tensor;
use super::module::{local, Module};
use crate::error::{Error, Result};
use crate::functional::{self as F, ConvOpts};
use crate::random::Generator;
use crate::tensor::Tensor;

/// A per-axis hyper-parameter: one value for every spatial axis (`3`) or one per axis
/// (`[3, 3, 1]`), as PyTorch accepts `int` or a tuple.
pub trait Axes<const N: usize> {
    fn axes(self) -> [usize; N];
}

impl<const N: usize> Axes<N> for usize {
    fn axes(self) -> [usize; N] {
        [self; N]
    }
}

impl<const N: usize> Axes<N> for [usize; N] {
    fn axes(self) -> [usize; N] {
        self
    }
}

/// The hyper-parameters of a (transposed) convolution layer, PyTorch's names and defaults:
/// stride 1, padding 0, dilation 1, groups 1, output padding 0, with bias.
///
/// ```
/// use kiln::nn::{Conv3d, ConvOptions};
/// let mut g = kiln::Generator::new(0);
/// let pool = Conv3d::build(ConvOptions::new(4, 4, 2).stride(2), &mut g)?;
/// # Ok::<(), kiln::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvOptions<const N: usize> {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_size: [usize; N],
    pub stride: [usize; N],
    pub padding: [usize; N],
    pub dilation: [usize; N],
    pub groups: usize,
    /// Extra size added to one side of a transposed convolution's output (ignored by `Conv`).
    pub output_padding: [usize; N],
    pub bias: bool,
}

impl<const N: usize> ConvOptions<N> {
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: impl Axes<N>) -> Self {
        ConvOptions {
            in_channels,
            out_channels,
            kernel_size: kernel_size.axes(),
            stride: [1; N],
            padding: [0; N],
            dilation: [1; N],
            groups: 1,
            output_padding: [0; N],
            bias: true,
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
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
    pub fn output_padding(mut self, p: impl Axes<N>) -> Self {
        self.output_padding = p.axes();
        self
    }
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    #[track_caller]
    fn check(&self, layer: &'static str, transposed: bool) -> Result<()> {
        let bad = |msg: String| Err(Error::shape(layer, msg));
        if self.in_channels == 0 || self.out_channels == 0 {
            return bad(format!(
                "channel counts must be positive, got in {} and out {}",
                self.in_channels, self.out_channels
            ));
        }
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return bad(format!(
                "groups {} must divide both in_channels {} and out_channels {}",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        for (what, v) in [
            ("kernel_size", &self.kernel_size),
            ("stride", &self.stride),
            ("dilation", &self.dilation),
        ] {
            if v.contains(&0) {
                return bad(format!("{what} must be positive, got {v:?}"));
            }
        }
        if transposed {
            for j in 0..N {
                if self.output_padding[j] >= self.stride[j].max(self.dilation[j]) {
                    return bad(format!(
                        "output_padding {:?} must be smaller than either stride {:?} or dilation {:?}",
                        self.output_padding, self.stride, self.dilation
                    ));
                }
            }
        }
        Ok(())
    }

    fn opts(&self) -> ConvOpts<'_> {
        ConvOpts {
            stride: &self.stride,
            padding: &self.padding,
            dilation: &self.dilation,
            groups: self.groups,
            output_padding: &self.output_padding,
        }
    }
}

/// PyTorch's initialisation of a convolution's parameters: weight of `shape` and (if `bias`)
/// a bias of `out_channels`, both `U(-b, b)` with `b = 1/sqrt(fan_in)`, `fan_in` the product
/// of the weight's dims after the first.
fn init_weight_bias(
    shape: &[usize],
    out_channels: usize,
    bias: bool,
    g: &mut Generator,
) -> (Tensor, Option<Tensor>) {
    let fan_in: usize = shape[1..].iter().product();
    let bound = 1.0 / (fan_in as f64).sqrt();
    let weight = uniform_tensor(shape, bound, g).requires_grad_(true);
    let bias = bias.then(|| uniform_tensor(&[out_channels], bound, g).requires_grad_(true));
    (weight, bias)
}

/// Convolution (cross-correlation) over `N` spatial axes (`nn.Conv1d/2d/3d`).
///
/// Input `[B, Cin, *spatial]` (or unbatched `[Cin, *spatial]`), weight
/// `[Cout, Cin/groups, *kernel]`, output size per axis
/// `(i + 2 p - d (k - 1) - 1) / s + 1`. Weight and bias are drawn from
/// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` with `fan_in = Cin/groups * prod(kernel)`: PyTorch's
/// `kaiming_uniform_(a = sqrt(5))` and its bias rule.
pub struct Conv<const N: usize> {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub options: ConvOptions<N>,
}

pub type Conv1d = Conv<1>;
pub type Conv2d = Conv<2>;
pub type Conv3d = Conv<3>;

impl<const N: usize> Conv<N> {
    /// A convolution with stride 1, no padding, and a bias. Panics if a size is zero; use
    /// [`Conv::build`] for a `Result`.
    #[track_caller]
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel_size: impl Axes<N>,
        g: &mut Generator,
    ) -> Self {
        Self::build(ConvOptions::new(in_channels, out_channels, kernel_size), g)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A convolution with the given options; an error for inconsistent options (zero sizes,
    /// groups not dividing the channels).
    #[track_caller]
    pub fn build(options: ConvOptions<N>, g: &mut Generator) -> Result<Self> {
        options.check(conv_name(N, false), false)?;
        let mut shape = vec![options.out_channels, options.in_channels / options.groups];
        shape.extend(options.kernel_size);
        let (weight, bias) = init_weight_bias(&shape, options.out_channels, options.bias, g);
        Ok(Conv {
            weight,
            bias,
            options,
        })
    }

    /// The forward pass, or an error naming the shapes if `x` does not fit the layer.
    #[track_caller]
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        F::try_conv(x, &self.weight, self.bias.as_ref(), &self.options.opts())
    }
}

impl<const N: usize> Module for Conv<N> {
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }

    fn local_parameters(&self) -> Vec<(String, Tensor)> {
        weight_bias(&self.weight, self.bias.as_ref())
    }
}

/// Transposed convolution over `N` spatial axes (`nn.ConvTranspose1d/2d/3d`): the gradient of
/// a convolution with respect to its input, used to upsample.
///
/// Weight `[Cin, Cout/groups, *kernel]`; output size per axis
/// `(i - 1) s - 2 p + d (k - 1) + output_padding + 1`. Initialised as PyTorch does, from the
/// weight's dim 1: `fan_in = Cout/groups * prod(kernel)`, bound `1/sqrt(fan_in)` for weight
/// and bias.
pub struct ConvTranspose<const N: usize> {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub options: ConvOptions<N>,
}

pub type ConvTranspose1d = ConvTranspose<1>;
pub type ConvTranspose2d = ConvTranspose<2>;
pub type ConvTranspose3d = ConvTranspose<3>;

impl<const N: usize> ConvTranspose<N> {
    /// A transposed convolution with stride 1, no padding, and a bias. Panics if a size is
    /// zero; use [`ConvTranspose::build`] for a `Result`.
    #[track_caller]
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel_size: impl Axes<N>,
        g: &mut Generator,
    ) -> Self {
        Self::build(ConvOptions::new(in_channels, out_channels, kernel_size), g)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A transposed convolution with the given options; an error for inconsistent options
    /// (also `output_padding` not smaller than stride or dilation, as PyTorch requires).
    #[track_caller]
    pub fn build(options: ConvOptions<N>, g: &mut Generator) -> Result<Self> {
        options.check(conv_name(N, true), true)?;
        let mut shape = vec![options.in_channels, options.out_channels / options.groups];
        shape.extend(options.kernel_size);
        let (weight, bias) = init_weight_bias(&shape, options.out_channels, options.bias, g);
        Ok(ConvTranspose {
            weight,
            bias,
            options,
        })
    }

    #[track_caller]
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        F::try_conv_transpose(x, &self.weight, self.bias.as_ref(), &self.options.opts())
    }
}

impl<const N: usize> Module for ConvTranspose<N> {
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }

    fn local_parameters(&self) -> Vec<(String, Tensor)> {
        weight_bias(&self.weight, self.bias.as_ref())
    }
}

pub(crate) fn weight_bias(w: &Tensor, b: Option<&Tensor>) -> Vec<(String, Tensor)> {
    match b {
        Some(b) => local(&[("weight", w), ("bias", b)]),
        None => local(&[("weight", w)]),
    }
}

fn conv_name(n: usize, transposed: bool) -> &'static str {
    match (n, transposed) {
        (1, false) => "Conv1d",
        (2, false) => "Conv2d",
        (3, false) => "Conv3d",
        (_, false) => "Conv",
        (1, true) => "ConvTranspose1d",
        (2, true) => "ConvTranspose2d",
        (3, true) => "ConvTranspose3d",
        (_, true) => "ConvTranspose",
    }
}
