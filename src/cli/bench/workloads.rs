//! The workloads of `kiln bench`: what each one computes, its FLOP count, and its kiln side.
//!
//! The PyTorch side of each is `bench/torch/<name with _ for ->.py`; both build the same
//! model (the parameter counts are compared), the same shapes and the same optimiser.

use crate::compile::{compile, CompiledStep};
use crate::functional::{self as F, ConvOpts, Reduction};
use crate::lesions::train::{loss as unet_loss, LossKind};
use crate::nn::models::{LeNet, UNet3d, UNet3dOptions};
use crate::nn::Module;
use crate::optim::{Adadelta, Sgd};
use crate::{DType, Generator, Tensor};

/// A workload name on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    /// LeNet training step: MSE, SGD (batches 1, 64, 256).
    LenetTrain,
    /// LeNet forward (batches 1, 64, 256).
    LenetInfer,
    /// 3-D U-Net base 32 training step: CE on log(clamp(softmax)), Adadelta (batches 1, 2).
    Unet3dTrain,
    /// 3-D U-Net base 32 forward (batch 8).
    Unet3dInfer,
    /// Conv2d 64->64 k3 p1 on Nx64x56x56, forward and backward (batch 16).
    Conv2d,
    /// sum(clamp(exp(relu(x*1.5+0.5)*x), max=10) - sigmoid(x)) on 4M floats.
    Fusion,
    /// 1024x1024 matrix product, f32.
    Sgemm,
    /// Every workload above, in this order.
    All,
}

/// One benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    LenetTrain,
    LenetInfer,
    Unet3dTrain,
    Unet3dInfer,
    Conv2d,
    Fusion,
    Sgemm,
}

/// The U-Net's width (the tutorial's), input channels, classes and patch side.
pub const UNET_BASE: usize = 32;
pub const UNET_IN: usize = 2;
pub const UNET_OUT: usize = 2;
pub const UNET_SIDE: usize = 32;
/// Conv2d 64 -> 64, 3x3, padding 1 on `[N, 64, 56, 56]`.
pub const CONV_C: usize = 64;
pub const CONV_HW: usize = 56;
/// The fused elementwise chain's length: 4M floats.
pub const FUSION_N: usize = 4 << 20;
/// SGEMM size.
pub const SGEMM_N: usize = 1024;
/// LeNet's SGD learning rate (the tutorial's).
pub const LENET_LR: f64 = 0.01;

pub const ALL: [Workload; 7] = [
    Workload::LenetTrain,
    Workload::LenetInfer,
    Workload::Unet3dTrain,
    Workload::Unet3dInfer,
    Workload::Conv2d,
    Workload::Fusion,
    Workload::Sgemm,
];

impl Name {
    pub fn workloads(self) -> Vec<Workload> {
        match self {
            Name::LenetTrain => vec![Workload::LenetTrain],
            Name::LenetInfer => vec![Workload::LenetInfer],
            Name::Unet3dTrain => vec![Workload::Unet3dTrain],
            Name::Unet3dInfer => vec![Workload::Unet3dInfer],
            Name::Conv2d => vec![Workload::Conv2d],
            Name::Fusion => vec![Workload::Fusion],
            Name::Sgemm => vec![Workload::Sgemm],
            Name::All => ALL.to_vec(),
        }
    }
}

impl Workload {
    /// The name on the command line and in the JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            Workload::LenetTrain => "lenet-train",
            Workload::LenetInfer => "lenet-infer",
            Workload::Unet3dTrain => "unet3d-train",
            Workload::Unet3dInfer => "unet3d-infer",
            Workload::Conv2d => "conv2d",
            Workload::Fusion => "fusion",
            Workload::Sgemm => "sgemm",
        }
    }

    /// The torch side's script in `bench/torch/`.
    pub fn torch_script(self) -> String {
        format!("{}.py", self.name().replace('-', "_"))
    }

    /// The batch sizes measured without `--batch`; `None` for workloads without a batch.
    pub fn default_batches(self) -> Vec<Option<usize>> {
        match self {
            Workload::LenetTrain | Workload::LenetInfer => vec![Some(1), Some(64), Some(256)],
            Workload::Unet3dTrain => vec![Some(1), Some(2)],
            Workload::Unet3dInfer => vec![Some(8)],
            Workload::Conv2d => vec![Some(16)],
            Workload::Fusion | Workload::Sgemm => vec![None],
        }
    }

    /// Whether `--batch` applies.
    pub fn has_batch(self) -> bool {
        !matches!(self, Workload::Fusion | Workload::Sgemm)
    }

    /// The batches to measure: `--batch`'s list where the workload has a batch.
    pub fn batches(self, over: Option<&[usize]>) -> Vec<Option<usize>> {
        match over {
            Some(b) if self.has_batch() => b.iter().map(|&n| Some(n)).collect(),
            _ => self.default_batches(),
        }
    }

    /// Floating-point operations of one call, counted analytically: 2 per multiply-add of the
    /// convolutions, transposed convolutions, linear layers and matrix products; a training
    /// step or a forward+backward counts 3 forwards (forward, input gradient, weight
    /// gradient). `None` where FLOPs mean little (the memory-bound fusion chain).
    pub fn flops(self, batch: Option<usize>) -> Option<f64> {
        let b = batch.unwrap_or(1) as f64;
        match self {
            Workload::LenetTrain => Some(3.0 * 2.0 * b * lenet_macs() as f64),
            Workload::LenetInfer => Some(2.0 * b * lenet_macs() as f64),
            Workload::Unet3dTrain => Some(3.0 * 2.0 * b * unet_macs(UNET_BASE) as f64),
            Workload::Unet3dInfer => Some(2.0 * b * unet_macs(UNET_BASE) as f64),
            Workload::Conv2d => {
                let hw = (CONV_HW * CONV_HW) as f64;
                Some(3.0 * 2.0 * b * (CONV_C * CONV_C * 9) as f64 * hw)
            }
            Workload::Fusion => None,
            Workload::Sgemm => Some(2.0 * (SGEMM_N as f64).powi(3)),
        }
    }

    /// Bytes a call must move at least (the fusion chain: read x once, write one float).
    pub fn bytes(self) -> Option<f64> {
        match self {
            Workload::Fusion => Some((FUSION_N * 4 + 4) as f64),
            _ => None,
        }
    }

    /// Builds the kiln side for `batch`: the model's parameter count (where there is a model)
    /// and the body timed by [`super::measure::measure`], whose first call traces and compiles.
    pub fn kiln(self, batch: Option<usize>) -> Result<(Option<usize>, Body), String> {
        let b = batch.unwrap_or(1);
        if b == 0 {
            return Err("the batch size must be at least 1".into());
        }
        match self {
            Workload::LenetTrain => lenet_train(b),
            Workload::LenetInfer => lenet_infer(b),
            Workload::Unet3dTrain => unet_train(b),
            Workload::Unet3dInfer => unet_infer(b),
            Workload::Conv2d => conv2d(b).map(|body| (None, body)),
            Workload::Fusion => fusion().map(|body| (None, body)),
            Workload::Sgemm => sgemm().map(|body| (None, body)),
        }
    }
}

/// Multiply-adds of LeNet's forward pass for one 1x32x32 image: conv1 (6 of 1x3x3 at 30x30),
/// conv2 (16 of 6x3x3 at 13x13), fc 576-120-84-10.
pub fn lenet_macs() -> u64 {
    let conv1 = 30 * 30 * 6 * 9;
    let conv2 = 13 * 13 * 16 * 6 * 9;
    let fc = 576 * 120 + 120 * 84 + 84 * 10;
    conv1 + conv2 + fc
}

/// Multiply-adds of the U-Net's forward pass for one `UNET_IN x 32^3` patch with width `b`.
pub fn unet_macs(b: usize) -> u64 {
    let b = b as u64;
    let vox = |level: u32| (UNET_SIDE as u64 >> level).pow(3);
    // A convolution: output voxels x Cout x Cin x kernel volume.
    let conv = |level: u32, cin: u64, cout: u64, k: u64| vox(level) * cout * cin * k;
    // A 2x2x2 stride-2 transposed convolution: each output voxel gets one tap of each input
    // channel, so output voxels x Cout x Cin.
    let up = |level: u32, cin: u64, cout: u64| vox(level) * cout * cin;
    let cin = UNET_IN as u64;
    conv(0, cin, b, 27)
        + conv(1, b, b, 8)
        + conv(1, b, 2 * b, 27)
        + conv(2, 2 * b, 2 * b, 8)
        + conv(2, 2 * b, 4 * b, 27)
        + conv(3, 4 * b, 4 * b, 8)
        + conv(3, 4 * b, 8 * b, 27)
        + up(2, 8 * b, 4 * b)
        + conv(2, 4 * b, 4 * b, 27)
        + up(1, 4 * b, 2 * b)
        + conv(1, 2 * b, 2 * b, 27)
        + up(0, 2 * b, b)
        + conv(0, b, b, 27)
        + conv(0, b, UNET_OUT as u64, 1)
}

/// One timed call of a workload.
pub type Body = Box<dyn FnMut() -> Result<(), String>>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn randn(shape: &[usize], g: &mut Generator) -> Result<Tensor, String> {
    let t = Tensor::randn_with(shape.to_vec(), DType::F32, g);
    t.realize().map_err(err)?;
    Ok(t)
}

/// Reads a step's first output as a number (the loss; `loss.item()` on the torch side), which
/// must be finite.
fn check_loss(out: &[Tensor]) -> Result<(), String> {
    let loss = out.first().ok_or("the step returned nothing")?;
    let l = loss.try_item().map_err(err)?;
    if l.is_finite() {
        Ok(())
    } else {
        Err(format!("the loss is {l}"))
    }
}

/// A body that compiles `make` on its first call and runs the step on `inputs` at every call,
/// checking the outputs with `check`.
fn compiled(
    inputs: Vec<Tensor>,
    mut make: impl FnMut(&[&Tensor]) -> crate::Result<CompiledStep> + 'static,
    check: fn(&[Tensor]) -> Result<(), String>,
) -> Body {
    let mut step: Option<CompiledStep> = None;
    Box::new(move || {
        let refs: Vec<&Tensor> = inputs.iter().collect();
        if step.is_none() {
            step = Some(make(&refs).map_err(err)?);
        }
        let s = step.as_ref().ok_or("no compiled step")?;
        check(&s.run(&refs).map_err(err)?)
    })
}

fn outputs_realised(out: &[Tensor]) -> Result<(), String> {
    if out.iter().all(|t| t.is_realized()) {
        Ok(())
    } else {
        Err("an output of the compiled step is not computed".into())
    }
}

fn lenet_train(b: usize) -> Result<(Option<usize>, Body), String> {
    let mut g = Generator::new(0);
    let net = LeNet::new(&mut g);
    let params = net.num_parameters();
    let mut opt = Sgd::new(net.parameters(), LENET_LR);
    let x = randn(&[b, 1, 32, 32], &mut g)?;
    let t = randn(&[b, 10], &mut g)?;
    let body = compiled(
        vec![x, t],
        move |ex| {
            compile(ex, |i| {
                opt.zero_grad();
                let loss = F::mse_loss(&net.forward(&i[0]), &i[1], Reduction::Mean);
                loss.try_backward(None)?;
                opt.step()?;
                Ok(vec![loss])
            })
        },
        check_loss,
    );
    Ok((Some(params), body))
}

fn lenet_infer(b: usize) -> Result<(Option<usize>, Body), String> {
    let mut g = Generator::new(0);
    let mut net = LeNet::new(&mut g);
    net.eval();
    let params = net.num_parameters();
    let x = randn(&[b, 1, 32, 32], &mut g)?;
    let body = compiled(
        vec![x],
        move |ex| {
            let _ng = crate::NoGradGuard::new();
            compile(ex, |i| Ok(vec![net.forward(&i[0])]))
        },
        outputs_realised,
    );
    Ok((Some(params), body))
}

fn unet(g: &mut Generator) -> Result<UNet3d, String> {
    UNet3d::new(UNET_IN, UNET_OUT, UNET_BASE, UNet3dOptions::default(), g).map_err(err)
}

fn unet_train(b: usize) -> Result<(Option<usize>, Body), String> {
    let mut g = Generator::new(0);
    let net = unet(&mut g)?;
    let params = net.num_parameters();
    let mut opt = Adadelta::new(net.parameters());
    let s = UNET_SIDE;
    let x = randn(&[b, UNET_IN, s, s, s], &mut g)?;
    // Labels 0, 1 and 2 (2 = ignored, as the tutorial's outside-the-brain voxels).
    let y = Tensor::randint_with(0, 3, [b, s, s, s], &mut g);
    let body = compiled(
        vec![x, y],
        move |ex| {
            compile(ex, |i| {
                opt.zero_grad();
                let loss = unet_loss(&net.try_forward(&i[0])?, &i[1], LossKind::CrossEntropy);
                loss.try_backward(None)?;
                opt.step()?;
                Ok(vec![loss])
            })
        },
        check_loss,
    );
    Ok((Some(params), body))
}

fn unet_infer(b: usize) -> Result<(Option<usize>, Body), String> {
    let mut g = Generator::new(0);
    let mut net = unet(&mut g)?;
    net.eval();
    let params = net.num_parameters();
    let s = UNET_SIDE;
    let x = randn(&[b, UNET_IN, s, s, s], &mut g)?;
    let body = compiled(
        vec![x],
        move |ex| {
            let _ng = crate::NoGradGuard::new();
            compile(ex, |i| Ok(vec![net.try_forward(&i[0])?]))
        },
        outputs_realised,
    );
    Ok((Some(params), body))
}

fn conv2d(b: usize) -> Result<Body, String> {
    let mut g = Generator::new(0);
    let x = randn(&[b, CONV_C, CONV_HW, CONV_HW], &mut g)?.requires_grad_(true);
    let w = randn(&[CONV_C, CONV_C, 3, 3], &mut g)?.requires_grad_(true);
    let bias = randn(&[CONV_C], &mut g)?.requires_grad_(true);
    Ok(compiled(
        vec![],
        move |_| {
            compile(&[], |_| {
                let opts = ConvOpts {
                    padding: &[1],
                    ..ConvOpts::default()
                };
                let loss = F::conv2d(&x, &w, Some(&bias), &opts).sum_all();
                let grads = crate::autograd::grad(&loss, &[&x, &w, &bias], None)?;
                Ok(grads.into_iter().flatten().collect())
            })
        },
        |out| {
            if out.len() == 3 {
                outputs_realised(out)
            } else {
                Err(format!("expected 3 gradients, got {}", out.len()))
            }
        },
    ))
}

fn fusion() -> Result<Body, String> {
    let mut g = Generator::new(0);
    let x = randn(&[FUSION_N], &mut g)?;
    Ok(compiled(
        vec![x],
        |ex| {
            compile(ex, |i| {
                let x = &i[0];
                let y = x.mul(1.5).add(0.5).relu().mul(x).exp();
                Ok(vec![y.clamp(None, Some(10.0)).sub(&x.sigmoid()).sum_all()])
            })
        },
        check_loss,
    ))
}

fn sgemm() -> Result<Body, String> {
    let mut g = Generator::new(0);
    let a = randn(&[SGEMM_N, SGEMM_N], &mut g)?;
    let b = randn(&[SGEMM_N, SGEMM_N], &mut g)?;
    Ok(compiled(
        vec![a, b],
        |ex| compile(ex, |i| Ok(vec![i[0].matmul(&i[1])])),
        outputs_realised,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_counts() {
        // LeNet: 48,600 + 146,016 + 80,040 multiply-adds per image.
        assert_eq!(lenet_macs(), 274_656);
        assert_eq!(Workload::Sgemm.flops(None), Some(2.0 * 1024f64.powi(3)));
        // Conv2d forward 2*N*Cout*H*W*Cin*9, forward+backward 3x that.
        let f = 3.0 * 2.0 * 16.0 * 64.0 * 56.0 * 56.0 * 64.0 * 9.0;
        assert_eq!(Workload::Conv2d.flops(Some(16)), Some(f));
        assert_eq!(Workload::Fusion.flops(None), None);
        // U-Net base 1, by hand: 2*27*32^3 + 8*16^3 + 2*27*16^3 + 4*8*8^3 + 8*27*8^3
        // + 16*8*4^3 + 32*27*4^3 + 32*8^3 + 16*27*8^3 + 8*16^3 + 4*27*16^3 + 2*32^3
        // + 27*32^3 + 2*32^3
        let by_hand: u64 = 2 * 27 * 32768
            + 8 * 4096
            + 2 * 27 * 4096
            + 4 * 8 * 512
            + 8 * 27 * 512
            + 16 * 8 * 64
            + 32 * 27 * 64
            + 32 * 512
            + 16 * 27 * 512
            + 8 * 4096
            + 4 * 27 * 4096
            + 2 * 32768
            + 27 * 32768
            + 2 * 32768;
        assert_eq!(unet_macs(1), by_hand);
    }

    /// The small workloads build, compile and run (twice: the first call compiles); the
    /// U-Nets are left to `kiln bench` itself, being slow in a debug build.
    #[test]
    fn small_workloads_run() {
        for (w, b) in [
            (Workload::LenetTrain, Some(2)),
            (Workload::LenetInfer, Some(2)),
            (Workload::Conv2d, Some(1)),
            (Workload::Fusion, None),
            (Workload::Sgemm, None),
        ] {
            let (params, mut body) = w.kiln(b).unwrap();
            assert_eq!(params.is_some(), w.name().starts_with("lenet"), "{w:?}");
            body().unwrap();
            body().unwrap();
        }
        assert!(Workload::LenetTrain.kiln(Some(0)).is_err());
    }

    #[test]
    fn names_and_batches() {
        assert_eq!(Name::All.workloads(), ALL.to_vec());
        assert_eq!(Workload::Unet3dTrain.torch_script(), "unet3d_train.py");
        assert_eq!(
            Workload::LenetTrain.batches(Some(&[4, 8])),
            vec![Some(4), Some(8)]
        );
        assert_eq!(Workload::Sgemm.batches(Some(&[4])), vec![None]);
        assert_eq!(Workload::Unet3dInfer.batches(None), vec![Some(8)]);
    }
}
