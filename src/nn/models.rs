//! The tutorial's models: LeNet and the 3-D patch U-Net.

use super::activation::Activation;
use super::conv::{Conv2d, Conv3d, ConvOptions, ConvTranspose3d};
use super::dropout::Dropout;
use super::linear::Linear;
use super::module::Module;
use super::norm::BatchNorm3d;
use crate::error::{Error, Result};
use crate::functional as F;
use crate::random::Generator;
use crate::tensor::Tensor;

/// The tutorial's LeNet: 1x32x32 input, conv 1->6 k3, max-pool 2, conv 6->16 k3, max-pool 2,
/// 576 -> 120 -> 84 -> 10 with ReLU; 81,194 parameters, named as PyTorch's `state_dict`.
pub struct LeNet {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc1: Linear,
    pub fc2: Linear,
    pub fc3: Linear,
    training: bool,
}

impl LeNet {
    /// PyTorch's default initialisation, drawn from `g`.
    pub fn new(g: &mut Generator) -> LeNet {
        let net = LeNet {
            conv1: Conv2d::new(1, 6, 3, g),
            conv2: Conv2d::new(6, 16, 3, g),
            fc1: Linear::new(16 * 6 * 6, 120, true, g),
            fc2: Linear::new(120, 84, true, g),
            fc3: Linear::new(84, 10, true, g),
            training: true,
        };
        net.name_tensors();
        net
    }
}

impl Module for LeNet {
    /// `[B, 1, 32, 32]` images to `[B, 10]` scores.
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor {
        let pool = F::PoolOpts::kernel(&[2]);
        let x = F::max_pool2d(&self.conv1.forward(x).relu(), &pool);
        let x = F::max_pool2d(&self.conv2.forward(&x).relu(), &pool);
        let x = x.flatten(1, -1);
        let x = self.fc1.forward(&x).relu();
        let x = self.fc2.forward(&x).relu();
        self.fc3.forward(&x)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("conv1".into(), &self.conv1),
            ("conv2".into(), &self.conv2),
            ("fc1".into(), &self.fc1),
            ("fc2".into(), &self.fc2),
            ("fc3".into(), &self.fc3),
        ]
    }

    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        vec![
            ("conv1".into(), &mut self.conv1),
            ("conv2".into(), &mut self.conv2),
            ("fc1".into(), &mut self.fc1),
            ("fc2".into(), &mut self.fc2),
            ("fc3".into(), &mut self.fc3),
        ]
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_local_training(&mut self, training: bool) {
        self.training = training;
    }
}

/// Variations of [`UNet3d`]; the default is exactly the tutorial's network.
#[derive(Clone, Debug, PartialEq)]
pub struct UNet3dOptions {
    /// `BatchNorm3d` after each 3x3x3 convolution `convK` (named `bnK`), before the residual
    /// sum and the activation; those convolutions then have no bias (the norm's shift
    /// replaces it).
    pub batch_norm: bool,
    /// Dropout probability after the activation of the bottleneck and decoder blocks
    /// (`conv4`..`conv7`); 0 for none.
    pub dropout: f64,
    /// Residual blocks: `act(conv(x) + skip(x))`, the skip the identity where the channel
    /// count is unchanged and a 1x1x1 convolution `resK` where it changes.
    pub residual: bool,
    /// Auxiliary softmax heads on the decoder at 1/2 (`aux1`, on the `conv6` features) and
    /// 1/4 resolution (`aux2`, on `conv5`), returned by [`UNet3d::forward_deep`].
    pub deep_supervision: bool,
    /// The nonlinearity after each block (ReLU in the tutorial).
    pub activation: Activation,
}

impl Default for UNet3dOptions {
    fn default() -> Self {
        UNet3dOptions {
            batch_norm: false,
            dropout: 0.0,
            residual: false,
            deep_supervision: false,
            activation: Activation::ReLU,
        }
    }
}

/// The tutorial's 3-D patch U-Net (`Unet3d` of the reference fixtures), channel widths
/// `b, 2b, 4b, 8b` for `base = b`:
///
/// ```text
/// x1 = relu(conv1(x))                  3x3x3, in -> b
/// x2 = relu(conv2(pool1(x1)))          pool: 2x2x2 stride-2 convolution (learned downsampling)
/// x3 = relu(conv3(pool2(x2)))
/// x4 = relu(conv4(pool3(x3)))          bottleneck, 8b channels at 1/8 resolution
/// x5 = relu(conv5(up1(x4) + x3))       up: 2x2x2 stride-2 transposed convolution; additive skip
/// x6 = relu(conv6(up2(x5) + x2))
/// x7 = relu(conv7(up3(x6) + x1))
/// y  = softmax(conv8(x7), dim 1)       1x1x1, b -> out
/// ```
///
/// Inputs are `[B, in, D, H, W]` with `D, H, W` divisible by 8. [`UNet3dOptions`] adds batch
/// norm, dropout, residual blocks and deep supervision; its default is exactly the above, with
/// PyTorch's parameter names.
pub struct UNet3d {
    pub conv1: Conv3d,
    pub pool1: Conv3d,
    pub conv2: Conv3d,
    pub pool2: Conv3d,
    pub conv3: Conv3d,
    pub pool3: Conv3d,
    pub conv4: Conv3d,
    pub up1: ConvTranspose3d,
    pub conv5: Conv3d,
    pub up2: ConvTranspose3d,
    pub conv6: Conv3d,
    pub up3: ConvTranspose3d,
    pub conv7: Conv3d,
    pub conv8: Conv3d,
    /// `bnK` after `convK` (K = 1..7), with `batch_norm`.
    pub bn: [Option<BatchNorm3d>; 7],
    /// `resK`, the 1x1x1 projection of block K's skip, with `residual` where the width changes.
    pub res: [Option<Conv3d>; 7],
    pub aux1: Option<Conv3d>,
    pub aux2: Option<Conv3d>,
    pub dropout: Option<Dropout>,
    in_channels: usize,
    out_channels: usize,
    options: UNet3dOptions,
    training: bool,
}

impl UNet3d {
    /// A U-Net from `in_channels` to `out_channels` class probabilities with width `base`,
    /// PyTorch's default initialisation drawn from `g`. An error for a zero size or a dropout
    /// probability outside `[0, 1)`.
    #[track_caller]
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        base: usize,
        options: UNet3dOptions,
        g: &mut Generator,
    ) -> Result<UNet3d> {
        if in_channels == 0 || out_channels == 0 || base == 0 {
            return Err(Error::shape(
                "UNet3d",
                format!("sizes must be positive, got in_channels {in_channels}, out_channels {out_channels}, base {base}"),
            ));
        }
        if !(0.0..1.0).contains(&options.dropout) {
            return Err(Error::shape(
                "UNet3d",
                format!("dropout must be in [0, 1), got {}", options.dropout),
            ));
        }
        let b = base;
        let bias = !options.batch_norm;
        let block3 = |cin: usize, cout: usize, g: &mut Generator| {
            Conv3d::build(ConvOptions::new(cin, cout, 3).padding(1).bias(bias), g)
        };
        // Draw in PyTorch's registration order.
        let conv1 = block3(in_channels, b, g)?;
        let pool1 = Conv3d::build(ConvOptions::new(b, b, 2).stride(2), g)?;
        let conv2 = block3(b, 2 * b, g)?;
        let pool2 = Conv3d::build(ConvOptions::new(2 * b, 2 * b, 2).stride(2), g)?;
        let conv3 = block3(2 * b, 4 * b, g)?;
        let pool3 = Conv3d::build(ConvOptions::new(4 * b, 4 * b, 2).stride(2), g)?;
        let conv4 = block3(4 * b, 8 * b, g)?;
        let up1 = ConvTranspose3d::build(ConvOptions::new(8 * b, 4 * b, 2).stride(2), g)?;
        let conv5 = block3(4 * b, 4 * b, g)?;
        let up2 = ConvTranspose3d::build(ConvOptions::new(4 * b, 2 * b, 2).stride(2), g)?;
        let conv6 = block3(2 * b, 2 * b, g)?;
        let up3 = ConvTranspose3d::build(ConvOptions::new(2 * b, b, 2).stride(2), g)?;
        let conv7 = block3(b, b, g)?;
        let conv8 = Conv3d::new(b, out_channels, 1, g);
        let widths = [
            (in_channels, b),
            (b, 2 * b),
            (2 * b, 4 * b),
            (4 * b, 8 * b),
            (4 * b, 4 * b),
            (2 * b, 2 * b),
            (b, b),
        ];
        let bn = widths.map(|(_, cout)| options.batch_norm.then(|| BatchNorm3d::new(cout)));
        let mut res: [Option<Conv3d>; 7] = Default::default();
        if options.residual {
            for (k, &(cin, cout)) in widths.iter().enumerate() {
                if cin != cout {
                    res[k] = Some(Conv3d::new(cin, cout, 1, g));
                }
            }
        }
        let (aux1, aux2) = if options.deep_supervision {
            (
                Some(Conv3d::new(2 * b, out_channels, 1, g)),
                Some(Conv3d::new(4 * b, out_channels, 1, g)),
            )
        } else {
            (None, None)
        };
        let dropout = (options.dropout > 0.0).then(|| Dropout::new(options.dropout));
        let net = UNet3d {
            conv1,
            pool1,
            conv2,
            pool2,
            conv3,
            pool3,
            conv4,
            up1,
            conv5,
            up2,
            conv6,
            up3,
            conv7,
            conv8,
            bn,
            res,
            aux1,
            aux2,
            dropout,
            in_channels,
            out_channels,
            options,
            training: true,
        };
        net.name_tensors();
        Ok(net)
    }

    pub fn options(&self) -> &UNet3dOptions {
        &self.options
    }

    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// Block `k` (0-based): conv, [batch norm], [+ skip], activation, [dropout].
    #[track_caller]
    fn block(&self, k: usize, conv: &Conv3d, x: &Tensor) -> Tensor {
        let mut y = conv.forward(x);
        if let Some(bn) = &self.bn[k] {
            y = bn.forward(&y);
        }
        if self.options.residual {
            y = match &self.res[k] {
                Some(p) => y.add(&p.forward(x)),
                None => y.add(x),
            };
        }
        y = self.options.activation.apply(&y);
        if k >= 3 {
            if let Some(d) = &self.dropout {
                y = d.forward(&y);
            }
        }
        y
    }

    #[track_caller]
    fn check(&self, x: &Tensor) -> Result<()> {
        let s = x.shape();
        if s.len() != 5 || s[1] != self.in_channels {
            return Err(Error::shape(
                "UNet3d",
                format!(
                    "expected input [B, {}, D, H, W], got shape {s:?}",
                    self.in_channels
                ),
            ));
        }
        if s[2..].iter().any(|&d| d == 0 || d % 8 != 0) {
            return Err(Error::shape(
                "UNet3d",
                format!("the spatial sizes of the input {s:?} must be positive multiples of 8 (three 2x downsamplings)"),
            ));
        }
        Ok(())
    }

    /// The decoder features `(x5, x6, x7)` at 1/4, 1/2 and full resolution.
    #[track_caller]
    fn features(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        self.check(x)?;
        let x1 = self.block(0, &self.conv1, x);
        let x2 = self.block(1, &self.conv2, &self.pool1.forward(&x1));
        let x3 = self.block(2, &self.conv3, &self.pool2.forward(&x2));
        let x4 = self.block(3, &self.conv4, &self.pool3.forward(&x3));
        let x5 = self.block(4, &self.conv5, &self.up1.forward(&x4).add(&x3));
        let x6 = self.block(5, &self.conv6, &self.up2.forward(&x5).add(&x2));
        let x7 = self.block(6, &self.conv7, &self.up3.forward(&x6).add(&x1));
        Ok((x5, x6, x7))
    }

    /// The scores before the final softmax, `[B, out, D, H, W]` (for a loss on logits).
    #[track_caller]
    pub fn try_logits(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, x7) = self.features(x)?;
        self.conv8.try_forward(&x7)
    }

    /// Class probabilities `[B, out, D, H, W]` (softmax over axis 1).
    #[track_caller]
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(F::softmax(&self.try_logits(x)?, 1))
    }

    /// The full-resolution probabilities, then, with `deep_supervision`, the auxiliary heads'
    /// probabilities at 1/2 and 1/4 resolution (compare them with the labels subsampled, e.g.
    /// `y.slice(axis, 0, -1, 2)` per spatial axis, or pooled one-hot labels).
    #[track_caller]
    pub fn forward_deep(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let (x5, x6, x7) = self.features(x)?;
        let mut out = vec![F::softmax(&self.conv8.try_forward(&x7)?, 1)];
        if let (Some(a1), Some(a2)) = (&self.aux1, &self.aux2) {
            out.push(F::softmax(&a1.try_forward(&x6)?, 1));
            out.push(F::softmax(&a2.try_forward(&x5)?, 1));
        }
        Ok(out)
    }
}

/// The children in PyTorch's registration order: the tutorial's layers, each block's batch
/// norm and skip projection after its convolution, the auxiliary heads, the dropout.
macro_rules! unet_children {
    ($net:expr, $ty:ty) => {{
        let UNet3d {
            conv1,
            pool1,
            conv2,
            pool2,
            conv3,
            pool3,
            conv4,
            up1,
            conv5,
            up2,
            conv6,
            up3,
            conv7,
            conv8,
            bn,
            res,
            aux1,
            aux2,
            dropout,
            ..
        } = $net;
        let mut v: Vec<(String, $ty)> = Vec::new();
        let mut bns = bn.into_iter();
        let mut ress = res.into_iter();
        macro_rules! block {
            ($k:literal, $conv:ident) => {
                v.push((concat!("conv", $k).to_string(), $conv));
                if let Some(Some(b)) = bns.next() {
                    v.push((concat!("bn", $k).to_string(), b));
                }
                if let Some(Some(r)) = ress.next() {
                    v.push((concat!("res", $k).to_string(), r));
                }
            };
        }
        block!(1, conv1);
        v.push(("pool1".to_string(), pool1));
        block!(2, conv2);
        v.push(("pool2".to_string(), pool2));
        block!(3, conv3);
        v.push(("pool3".to_string(), pool3));
        block!(4, conv4);
        v.push(("up1".to_string(), up1));
        block!(5, conv5);
        v.push(("up2".to_string(), up2));
        block!(6, conv6);
        v.push(("up3".to_string(), up3));
        block!(7, conv7);
        v.push(("conv8".to_string(), conv8));
        if let Some(a) = aux1 {
            v.push(("aux1".to_string(), a));
        }
        if let Some(a) = aux2 {
            v.push(("aux2".to_string(), a));
        }
        if let Some(d) = dropout {
            v.push(("dropout".to_string(), d));
        }
        v
    }};
}

impl Module for UNet3d {
    /// Class probabilities `[B, out, D, H, W]`; panics with the shapes for an input that does
    /// not fit (see [`UNet3d::try_forward`]).
    #[track_caller]
    fn forward(&self, x: &Tensor) -> Tensor {
        self.try_forward(x).unwrap_or_else(|e| panic!("{e}"))
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        unet_children!(self, &dyn Module)
    }

    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        unet_children!(self, &mut dyn Module)
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_local_training(&mut self, training: bool) {
        self.training = training;
    }
}
