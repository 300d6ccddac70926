//! The `nn` library against PyTorch: parameter names, shapes and counts of the tutorial's
//! models, their loss and gradients from the reference fixtures' initial parameters, each
//! layer against the single-op fixtures, initialisation statistics, batch norm's running
//! statistics, dropout, train/eval modes and state-dict loading errors.
//!
//! Every expected value comes from PyTorch (the fixtures, `../shared/fixtures/torch`, or
//! `KILN_FIXTURES`) or from the math computed here by hand, never from kiln itself.

mod common;

use common::{compare, fixture_dir, Fixture};
use kiln::functional::{self as F, Reduction};
use kiln::nn::{self, init, Module, StateDict};
use kiln::{DType, Generator, Tensor};
use std::collections::BTreeMap;

fn fixture(name: &str) -> Fixture {
    let path = fixture_dir().join(format!("{name}.safetensors"));
    Fixture::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// The fixture's tensors under `prefix.`, as a state dict.
fn sub_state(fx: &Fixture, prefix: &str) -> StateDict {
    let p = format!("{prefix}.");
    let mut names: Vec<&String> = fx.tensors.keys().filter(|k| k.starts_with(&p)).collect();
    names.sort();
    names
        .into_iter()
        .map(|k| (k[p.len()..].to_string(), fx.tensors[k].clone()))
        .collect()
}

/// `param.*` names and shapes of a training fixture.
fn fixture_params(fx: &Fixture) -> BTreeMap<String, Vec<usize>> {
    sub_state(fx, "param")
        .iter()
        .map(|(k, t)| (k.to_string(), t.shape().to_vec()))
        .collect()
}

fn model_params(m: &dyn Module) -> BTreeMap<String, Vec<usize>> {
    m.named_parameters()
        .into_iter()
        .map(|(k, t)| (k, t.shape().to_vec()))
        .collect()
}

fn floats(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: kiln {g}, expected {w} (tol {tol})"
        );
    }
}

// ----- the tutorial's models against the training fixtures ---------------------------------

#[test]
fn lenet_has_pytorchs_81194_parameters_names_and_shapes() {
    let net = nn::LeNet::new(&mut Generator::new(0));
    assert_eq!(net.num_parameters(), 81_194);
    let fx = fixture("lenet_mse_sgd");
    assert_eq!(model_params(&net), fixture_params(&fx));
    // PyTorch's order: registration order, weight before bias.
    let names: Vec<String> = net.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "conv1.weight",
            "conv1.bias",
            "conv2.weight",
            "conv2.bias",
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
            "fc3.weight",
            "fc3.bias"
        ]
    );
    // Parameters are leaves requiring grad, named for lowered graphs.
    for (n, p) in net.named_parameters() {
        assert!(p.requires_grad() && p.is_leaf(), "{n}");
        assert_eq!(p.name().as_deref(), Some(n.as_str()));
    }
    assert!(net.named_buffers().is_empty());
    assert_eq!(net.state_dict().keys().collect::<Vec<_>>(), names);
}

#[test]
fn unet3d_parameters_match_the_fixture_names_shapes_and_count() {
    let fx = fixture("unet3d_ce_adadelta");
    let args = fx.json("args");
    let base = args["base"].as_u64().unwrap() as usize;
    let cin = args["in_channels"].as_u64().unwrap() as usize;
    let cout = args["out_channels"].as_u64().unwrap() as usize;
    let net = nn::UNet3d::new(cin, cout, base, Default::default(), &mut Generator::new(0)).unwrap();
    let want = fixture_params(&fx);
    assert_eq!(model_params(&net), want);
    let total: usize = want.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(net.num_parameters(), total);
    // The order of `Unet3d.__init__`.
    let order: Vec<String> = net
        .state_dict()
        .keys()
        .filter(|k| k.ends_with(".weight"))
        .map(|k| k.trim_end_matches(".weight").to_string())
        .collect();
    assert_eq!(
        order,
        [
            "conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "conv4", "up1", "conv5", "up2",
            "conv6", "up3", "conv7", "conv8"
        ]
    );
}

/// Loads the fixture's initial parameters into `net`, runs step 0's forward and backward and
/// compares the loss and every gradient with PyTorch's.
fn check_training_step0(
    fx: &Fixture,
    net: &dyn Module,
    loss_fn: impl Fn(&Tensor, &Tensor) -> Tensor,
) {
    let tol = fx.tol();
    net.load_state_dict(&sub_state(fx, "param"), true).unwrap();
    let x = fx.get("step0.x").unwrap();
    let y = fx.get("step0.y").unwrap();
    net.zero_grad();
    let loss = loss_fn(&net.forward(x), y);
    loss.backward();
    let err = compare(
        "step0.loss",
        &loss.reshape(&[1]),
        fx.get("step0.loss").unwrap(),
        tol,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", fx.name));
    println!("{}: loss {:.6} rel err {err:.2e}", fx.name, loss.item());
    let mut worst: f64 = 0.0;
    for (name, p) in net.named_parameters() {
        let g = p.grad().unwrap_or_else(|| panic!("{name} has no gradient"));
        let want = fx.get(&format!("step0.grad.{name}")).unwrap();
        let e = compare(&format!("grad {name}"), &g, want, tol)
            .unwrap_or_else(|e| panic!("{}: {e}", fx.name));
        worst = worst.max(e);
    }
    println!(
        "{}: worst gradient rel err {worst:.2e} (tol {tol})",
        fx.name
    );
}

#[test]
fn lenet_loss_and_gradients_match_pytorch_from_its_initial_parameters() {
    let fx = fixture("lenet_mse_sgd");
    let net = nn::LeNet::new(&mut Generator::new(1));
    check_training_step0(&fx, &net, |out, y| F::mse_loss(out, y, Reduction::Mean));
}

#[test]
fn lenet_cross_entropy_gradients_match_pytorch() {
    let fx = fixture("lenet_ce_sgd_momentum");
    let net = nn::LeNet::new(&mut Generator::new(2));
    check_training_step0(&fx, &net, |out, y| {
        F::cross_entropy(out, y, None, -100, Reduction::Mean)
    });
}

#[test]
fn unet3d_loss_and_gradients_match_pytorch_from_its_initial_parameters() {
    let fx = fixture("unet3d_ce_adadelta");
    let args = fx.json("args");
    let ignore = args["ignore_index"].as_i64().unwrap();
    let net = nn::UNet3d::new(
        args["in_channels"].as_u64().unwrap() as usize,
        args["out_channels"].as_u64().unwrap() as usize,
        args["base"].as_u64().unwrap() as usize,
        Default::default(),
        &mut Generator::new(3),
    )
    .unwrap();
    check_training_step0(&fx, &net, |pred, y| {
        let logp = pred.clamp(Some(1e-7), Some(1.0)).log();
        F::cross_entropy(&logp, y, None, ignore, Reduction::Mean)
    });
}

#[test]
fn lowered_graphs_name_parameters_by_their_dotted_paths() {
    let net = nn::LeNet::new(&mut Generator::new(0));
    let x = Tensor::zeros([1, 1, 32, 32]);
    let loss = net.forward(&x).sum_all();
    let g = kiln::autograd::backward_graph(&loss).unwrap();
    let params: Vec<&str> = g.params.keys().map(String::as_str).collect();
    for name in ["conv1.weight", "conv2.bias", "fc3.weight"] {
        assert!(params.contains(&name), "{name} not in {params:?}");
    }
}

// ----- layers against the single-op fixtures -----------------------------------------------

fn usizes(v: &serde_json::Value, key: &str) -> Vec<usize> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn arr<const N: usize>(v: &[usize]) -> [usize; N] {
    v.try_into().unwrap()
}

/// Runs `layer` on the fixture's input with its parameters, compares the output and, through
/// `sum(out * cotangent)`, the gradients of the input and the parameters.
fn check_layer(name: &str, layer: &dyn Module) {
    let fx = fixture(name);
    let tol = fx.tol();
    let inputs = fx.list("inputs");
    let xname = inputs[0].clone();
    let params: StateDict = inputs[1..]
        .iter()
        .map(|k| (k.clone(), fx.get(k).unwrap().clone()))
        .collect();
    layer.load_state_dict(&params, true).unwrap();
    let x = fx.get(&xname).unwrap().detach().requires_grad_(true);
    let out = layer.forward(&x);
    compare(&format!("{name} out"), &out, fx.get("out").unwrap(), tol).unwrap();
    layer.zero_grad();
    out.mul(fx.get("cotangent").unwrap()).sum_all().backward();
    compare(
        &format!("{name} grad {xname}"),
        &x.grad().unwrap(),
        fx.get(&format!("grad.{xname}")).unwrap(),
        tol,
    )
    .unwrap();
    for (pname, p) in layer.named_parameters() {
        compare(
            &format!("{name} grad {pname}"),
            &p.grad().unwrap(),
            fx.get(&format!("grad.{pname}")).unwrap(),
            tol,
        )
        .unwrap();
    }
}

fn conv_options<const N: usize>(fx: &Fixture, transposed: bool) -> nn::ConvOptions<N> {
    let a = fx.json("args");
    let w = fx.get("weight").unwrap().shape().to_vec();
    let groups = a["groups"].as_u64().unwrap() as usize;
    let (cin, cout) = if transposed {
        (w[0], w[1] * groups)
    } else {
        (w[1] * groups, w[0])
    };
    let mut o = nn::ConvOptions::new(cin, cout, arr::<N>(&w[2..]))
        .stride(arr::<N>(&usizes(&a, "stride")))
        .padding(arr::<N>(&usizes(&a, "padding")))
        .dilation(arr::<N>(&usizes(&a, "dilation")))
        .groups(groups);
    if transposed {
        o = o.output_padding(arr::<N>(&usizes(&a, "output_padding")));
    }
    o
}

#[test]
fn conv_layers_match_pytorch_with_stride_padding_dilation_and_groups() {
    let mut g = Generator::new(0);
    for i in 0..4 {
        let name = format!("conv2d_{i}");
        let layer = nn::Conv2d::build(conv_options(&fixture(&name), false), &mut g).unwrap();
        check_layer(&name, &layer);
    }
    for i in 0..3 {
        let name = format!("conv3d_{i}");
        let layer = nn::Conv3d::build(conv_options(&fixture(&name), false), &mut g).unwrap();
        check_layer(&name, &layer);
    }
}

#[test]
fn conv_transpose_layers_match_pytorch_with_output_padding() {
    let mut g = Generator::new(0);
    for i in 0..3 {
        let name = format!("conv_transpose2d_{i}");
        let layer =
            nn::ConvTranspose2d::build(conv_options(&fixture(&name), true), &mut g).unwrap();
        check_layer(&name, &layer);
    }
    let name = "conv_transpose3d_0";
    let layer = nn::ConvTranspose3d::build(conv_options(&fixture(name), true), &mut g).unwrap();
    check_layer(name, &layer);
}

#[test]
fn pooling_layers_match_pytorch() {
    for i in 0..3 {
        for kind in ["max", "avg"] {
            let name = format!("{kind}_pool2d_{i}");
            let a = fixture(&name).json("args");
            let (k, s, p) = (
                arr::<2>(&usizes(&a, "kernel_size")),
                arr::<2>(&usizes(&a, "stride")),
                arr::<2>(&usizes(&a, "padding")),
            );
            if kind == "max" {
                check_layer(&name, &nn::MaxPool2d::new(k).stride(s).padding(p));
            } else {
                check_layer(&name, &nn::AvgPool2d::new(k).stride(s).padding(p));
            }
        }
    }
    check_layer("max_pool3d_0", &nn::MaxPool3d::new(2));
}

#[test]
fn linear_and_softmax_layers_match_pytorch() {
    let fx = fixture("linear");
    let w = fx.get("weight").unwrap().shape().to_vec();
    check_layer(
        "linear",
        &nn::Linear::new(w[1], w[0], true, &mut Generator::new(0)),
    );
    check_layer("softmax_d1", &nn::Softmax { dim: 1 });
    check_layer("softmax_d2", &nn::Softmax { dim: -1 });
    check_layer("log_softmax_d1", &nn::LogSoftmax { dim: 1 });
    check_layer("log_softmax_d2", &nn::LogSoftmax { dim: -1 });
}

#[test]
fn layer_options_are_checked() {
    let mut g = Generator::new(0);
    let e = nn::Conv2d::build(nn::ConvOptions::new(3, 4, 3).groups(2), &mut g)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("groups 2") && e.contains("in_channels 3"), "{e}");
    let e = nn::ConvTranspose2d::build(
        nn::ConvOptions::new(4, 4, 3).stride(2).output_padding(2),
        &mut g,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("output_padding"), "{e}");
    assert!(nn::Conv3d::build(nn::ConvOptions::new(2, 2, 0), &mut g).is_err());
    let conv = nn::Conv2d::new(3, 4, 3, &mut g);
    let e = conv
        .try_forward(&Tensor::zeros([1, 2, 8, 8]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("conv"), "{e}");
    let lin = nn::Linear::new(5, 2, true, &mut g);
    let e = lin
        .try_forward(&Tensor::zeros([3, 4]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("[3, 4]") && e.contains("in_features = 5"), "{e}");
    let e = nn::MaxPool2d::new(3)
        .try_forward(&Tensor::zeros([1, 1, 2, 2]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("smaller than the kernel"), "{e}");
}

#[test]
fn conv_output_shapes_follow_pytorchs_formulas() {
    let mut g = Generator::new(0);
    // (i + 2p - d(k-1) - 1)/s + 1 = (17 + 4 - 4 - 1)/3 + 1 = 6
    let c = nn::Conv1d::build(
        nn::ConvOptions::new(4, 6, 3)
            .stride(3)
            .padding(2)
            .dilation(2)
            .groups(2),
        &mut g,
    )
    .unwrap();
    assert_eq!(c.weight.shape(), &[6, 2, 3]);
    assert_eq!(c.forward(&Tensor::zeros([2, 4, 17])).shape(), &[2, 6, 6]);
    // (i-1)s - 2p + d(k-1) + op + 1 = 4*2 - 2 + 2 + 1 + 1 = 10
    let t = nn::ConvTranspose1d::build(
        nn::ConvOptions::new(4, 6, 3)
            .stride(2)
            .padding(1)
            .output_padding(1)
            .groups(2),
        &mut g,
    )
    .unwrap();
    assert_eq!(t.weight.shape(), &[4, 3, 3]);
    assert_eq!(t.forward(&Tensor::zeros([2, 4, 5])).shape(), &[2, 6, 10]);
    let t3 = nn::ConvTranspose3d::new(3, 2, [1, 2, 3], &mut g);
    assert_eq!(t3.weight.shape(), &[3, 2, 1, 2, 3]);
    assert_eq!(
        t3.forward(&Tensor::zeros([3, 4, 4, 4])).shape(),
        &[2, 4, 5, 6]
    );
    let p = nn::AvgPool1d::new(2).forward(&Tensor::ones([1, 1, 5]));
    assert_eq!(floats(&p), vec![1.0, 1.0]);
    let f = nn::Flatten::new().forward(&Tensor::zeros([2, 3, 4, 5]));
    assert_eq!(f.shape(), &[2, 60]);
}

// ----- initialisation ------------------------------------------------------------------------

/// Checks `|v| <= bound`, that the extremes come near the bound, a mean near 0 and the
/// variance `bound^2 / 3` of `U(-bound, bound)`.
fn check_uniform(what: &str, v: &[f64], bound: f64) {
    let n = v.len() as f64;
    let max = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(
        max <= bound * (1.0 + 1e-6),
        "{what}: |w| {max} exceeds bound {bound}"
    );
    if v.len() >= 1000 {
        assert!(max > 0.99 * bound, "{what}: max |w| {max}, bound {bound}");
    }
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let sd_mean = bound / 3f64.sqrt() / n.sqrt();
    assert!(
        mean.abs() < 6.0 * sd_mean,
        "{what}: mean {mean}, bound {bound}"
    );
    if v.len() >= 1000 {
        let want = bound * bound / 3.0;
        assert!(
            (var / want - 1.0).abs() < 0.1,
            "{what}: var {var}, want {want}"
        );
    }
}

#[test]
fn layers_use_pytorchs_default_initialisation_bounds() {
    let mut g = Generator::new(7);
    let l = nn::Linear::new(400, 300, true, &mut g);
    check_uniform("linear.weight", &floats(&l.weight), 1.0 / 400f64.sqrt());
    check_uniform(
        "linear.bias",
        &floats(l.bias.as_ref().unwrap()),
        1.0 / 400f64.sqrt(),
    );
    let c = nn::Conv2d::new(6, 16, 5, &mut g);
    check_uniform("conv.weight", &floats(&c.weight), 1.0 / 150f64.sqrt());
    check_uniform(
        "conv.bias",
        &floats(c.bias.as_ref().unwrap()),
        1.0 / 150f64.sqrt(),
    );
    // Grouped: fan_in = Cin/groups * k = 4 * 9.
    let c = nn::Conv2d::build(nn::ConvOptions::new(8, 40, 3).groups(2), &mut g).unwrap();
    check_uniform(
        "grouped conv.weight",
        &floats(&c.weight),
        1.0 / 36f64.sqrt(),
    );
    // Transposed: PyTorch takes fan_in from weight dim 1 = Cout/groups: 32 * 8 here.
    let t = nn::ConvTranspose3d::new(64, 32, 2, &mut g);
    assert_eq!(t.weight.shape(), &[64, 32, 2, 2, 2]);
    check_uniform("convT.weight", &floats(&t.weight), 1.0 / 256f64.sqrt());
    check_uniform(
        "convT.bias",
        &floats(t.bias.as_ref().unwrap()),
        1.0 / 256f64.sqrt(),
    );
    let bn = nn::BatchNorm2d::new(5);
    assert_eq!(floats(bn.weight.as_ref().unwrap()), vec![1.0; 5]);
    assert_eq!(floats(bn.bias.as_ref().unwrap()), vec![0.0; 5]);
    assert_eq!(floats(bn.running_mean.as_ref().unwrap()), vec![0.0; 5]);
    assert_eq!(floats(bn.running_var.as_ref().unwrap()), vec![1.0; 5]);
}

#[test]
fn init_functions_follow_pytorchs_formulas() {
    let mut g = Generator::new(11);
    let w = Tensor::zeros([200, 300]);
    init::xavier_uniform_(&w, 1.0, &mut g).unwrap();
    check_uniform("xavier_uniform_", &floats(&w), (6.0f64 / 500.0).sqrt());
    init::kaiming_uniform_(
        &w,
        0.0,
        init::FanMode::FanIn,
        init::Nonlinearity::Relu,
        &mut g,
    )
    .unwrap();
    check_uniform(
        "kaiming_uniform_ relu",
        &floats(&w),
        2f64.sqrt() * (3.0f64 / 300.0).sqrt(),
    );
    init::kaiming_uniform_(
        &w,
        5f64.sqrt(),
        init::FanMode::FanOut,
        init::Nonlinearity::LeakyRelu,
        &mut g,
    )
    .unwrap();
    check_uniform(
        "kaiming_uniform_ a=sqrt5 fan_out",
        &floats(&w),
        1.0 / 200f64.sqrt(),
    );
    init::uniform_(&w, -0.5, 0.25, &mut g).unwrap();
    let v = floats(&w);
    assert!(v.iter().all(|&x| (-0.5..0.25).contains(&x)));
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    assert!((mean + 0.125).abs() < 0.003, "{mean}");
    init::normal_(&w, 2.0, 0.5, &mut g).unwrap();
    let v = floats(&w);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    assert!(
        (mean - 2.0).abs() < 0.01 && (sd - 0.5).abs() < 0.01,
        "{mean} {sd}"
    );
    init::xavier_normal_(&w, 2.0, &mut g).unwrap();
    let v = floats(&w);
    let sd = (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    assert!(
        (sd / (2.0 * (2.0f64 / 500.0).sqrt()) - 1.0).abs() < 0.02,
        "{sd}"
    );
    init::zeros_(&w).unwrap();
    assert!(floats(&w).iter().all(|&x| x == 0.0));
    init::ones_(&w).unwrap();
    assert!(floats(&w).iter().all(|&x| x == 1.0));
    assert!((init::calculate_gain(init::Nonlinearity::Tanh, None) - 5.0 / 3.0).abs() < 1e-15);
    assert!(
        (init::calculate_gain(init::Nonlinearity::LeakyRelu, Some(5f64.sqrt()))
            - (1.0f64 / 3.0).sqrt())
        .abs()
            < 1e-15
    );
    // Errors, not panics.
    assert!(init::uniform_(&w, 1.0, 0.0, &mut g).is_err());
    assert!(init::xavier_uniform_(&Tensor::zeros([5]), 1.0, &mut g).is_err());
    assert!(init::zeros_(&Tensor::full([2], 0.0, DType::I64)).is_err());
    // In place: a parameter keeps its identity, and it is reproducible from a seed.
    let p = Tensor::zeros([3, 4]).requires_grad_(true);
    let id = p.id();
    init::normal_(&p, 0.0, 1.0, &mut Generator::new(3)).unwrap();
    let a = floats(&p);
    init::normal_(&p, 0.0, 1.0, &mut Generator::new(3)).unwrap();
    assert_eq!(p.id(), id);
    assert_eq!(floats(&p), a);
}

#[test]
fn a_seed_reproduces_a_network() {
    let a = nn::LeNet::new(&mut Generator::new(5));
    let b = nn::LeNet::new(&mut Generator::new(5));
    let c = nn::LeNet::new(&mut Generator::new(6));
    for ((n, pa), ((_, pb), (_, pc))) in a
        .named_parameters()
        .into_iter()
        .zip(b.named_parameters().into_iter().zip(c.named_parameters()))
    {
        assert_eq!(floats(&pa), floats(&pb), "{n}");
        assert_ne!(floats(&pa), floats(&pc), "{n}");
    }
}

// ----- batch norm --------------------------------------------------------------------------

#[test]
fn batch_norm_layers_match_pytorch_in_training_mode() {
    for (name, nd) in [
        ("batch_norm1d_train", 1),
        ("batch_norm2d_train", 2),
        ("batch_norm3d_train", 3),
    ] {
        let fx = fixture(name);
        let tol = fx.tol();
        let c = fx.get("weight").unwrap().numel();
        let layer: Box<dyn Module> = match nd {
            1 => Box::new(nn::BatchNorm1d::new(c)),
            2 => Box::new(nn::BatchNorm2d::new(c)),
            _ => Box::new(nn::BatchNorm3d::new(c)),
        };
        let state: StateDict = ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .map(|k| (k.to_string(), fx.get(k).unwrap().clone()))
            .collect();
        layer.load_state_dict(&state, true).unwrap();
        let x = fx.get("input").unwrap().detach().requires_grad_(true);
        let y = layer.forward(&x);
        compare(name, &y, fx.get("out.0").unwrap(), tol).unwrap();
        let sd = layer.state_dict();
        compare(
            "running_mean",
            sd.get("running_mean").unwrap(),
            fx.get("out.1").unwrap(),
            tol,
        )
        .unwrap();
        compare(
            "running_var",
            sd.get("running_var").unwrap(),
            fx.get("out.2").unwrap(),
            tol,
        )
        .unwrap();
        assert_eq!(
            sd.get("num_batches_tracked").unwrap().to_vec::<i64>(),
            vec![1]
        );
        y.mul(fx.get("cotangent.0").unwrap()).sum_all().backward();
        compare(
            "grad input",
            &x.grad().unwrap(),
            fx.get("grad.input").unwrap(),
            tol,
        )
        .unwrap();
        for (n, p) in layer.named_parameters() {
            compare(
                &n,
                &p.grad().unwrap(),
                fx.get(&format!("grad.{n}")).unwrap(),
                tol,
            )
            .unwrap();
        }
    }
}

/// Per-channel batch mean, biased and unbiased variance of `[N, C]` data, by hand.
fn channel_stats(x: &[[f64; 2]]) -> [(f64, f64, f64); 2] {
    let n = x.len() as f64;
    [0, 1].map(|c| {
        let m = x.iter().map(|r| r[c]).sum::<f64>() / n;
        let ss = x.iter().map(|r| (r[c] - m).powi(2)).sum::<f64>();
        (m, ss / n, ss / (n - 1.0))
    })
}

#[test]
fn batch_norm_running_statistics_follow_two_steps_then_eval_uses_them() {
    let eps = 1e-5;
    let x1 = [[1.0, -2.0], [2.0, 0.0], [4.0, 1.0], [5.0, 5.0]];
    let x2 = [[0.0, 3.0], [-1.0, 3.5], [3.0, 2.0], [6.0, -4.0]];
    let t = |x: &[[f64; 2]]| {
        Tensor::from_vec(
            x.iter().flatten().copied().collect::<Vec<f64>>(),
            [x.len(), 2],
        )
        .to_dtype(DType::F32)
    };
    let mut bn = nn::BatchNorm1d::new(2);
    let w = [1.5, -0.5];
    let b = [0.25, 2.0];
    let state: StateDict = [
        (
            "weight".to_string(),
            Tensor::from_slice(&[w[0] as f32, w[1] as f32]),
        ),
        (
            "bias".to_string(),
            Tensor::from_slice(&[b[0] as f32, b[1] as f32]),
        ),
    ]
    .into_iter()
    .collect();
    bn.load_state_dict(&state, false).unwrap();
    let (mut rm, mut rv) = ([0.0, 0.0], [1.0, 1.0]);
    let alias = bn.state_dict();
    for x in [&x1, &x2] {
        let y = floats(&bn.forward(&t(x)));
        let st = channel_stats(x);
        for (i, row) in x.iter().enumerate() {
            for c in 0..2 {
                let (m, v, _) = st[c];
                let want = (row[c] - m) / (v + eps).sqrt() * w[c] + b[c];
                assert!((y[i * 2 + c] - want).abs() < 1e-5, "train y[{i},{c}]");
            }
        }
        for c in 0..2 {
            rm[c] = 0.9 * rm[c] + 0.1 * st[c].0;
            rv[c] = 0.9 * rv[c] + 0.1 * st[c].2;
        }
        let m = bn.running_mean.as_ref().unwrap();
        // Realised leaves: no history carried from step to step.
        assert!(m.is_realized() && m.is_leaf() && !m.requires_grad());
        assert_close("running_mean", &floats(m), &rm, 1e-6);
        assert_close(
            "running_var",
            &floats(bn.running_var.as_ref().unwrap()),
            &rv,
            1e-6,
        );
    }
    assert_eq!(
        bn.num_batches_tracked.as_ref().unwrap().to_vec::<i64>(),
        vec![2]
    );
    // The state dict taken before training shares the buffers' storage, as in PyTorch.
    assert_close(
        "alias",
        &floats(alias.get("running_mean").unwrap()),
        &rm,
        1e-6,
    );

    bn.eval();
    assert!(!bn.is_training());
    let y = floats(&bn.forward(&t(&x1)));
    for (i, row) in x1.iter().enumerate() {
        for c in 0..2 {
            let want = (row[c] - rm[c]) / (rv[c] + eps).sqrt() * w[c] + b[c];
            assert!((y[i * 2 + c] - want).abs() < 1e-5, "eval y[{i},{c}]");
        }
    }
    // Evaluation does not touch the running statistics.
    assert_close(
        "eval keeps running_mean",
        &floats(bn.running_mean.as_ref().unwrap()),
        &rm,
        1e-6,
    );
    assert_eq!(
        bn.num_batches_tracked.as_ref().unwrap().to_vec::<i64>(),
        vec![2]
    );
}

#[test]
fn batch_norm_without_momentum_is_a_cumulative_average() {
    let bn = nn::BatchNorm1d::new(2).momentum(None);
    let x1 = [[1.0, 2.0], [3.0, -2.0], [8.0, 0.0]];
    let x2 = [[0.0, 1.0], [2.0, 1.0], [-5.0, 4.0]];
    for x in [&x1, &x2] {
        let data: Vec<f32> = x.iter().flatten().map(|&v| v as f32).collect();
        bn.forward(&Tensor::from_vec(data, [3, 2]));
    }
    let (s1, s2) = (channel_stats(&x1), channel_stats(&x2));
    let rm: Vec<f64> = (0..2).map(|c| (s1[c].0 + s2[c].0) / 2.0).collect();
    let rv: Vec<f64> = (0..2).map(|c| (s1[c].2 + s2[c].2) / 2.0).collect();
    assert_close(
        "cumulative mean",
        &floats(bn.running_mean.as_ref().unwrap()),
        &rm,
        1e-6,
    );
    assert_close(
        "cumulative var",
        &floats(bn.running_var.as_ref().unwrap()),
        &rv,
        1e-6,
    );
}

#[test]
fn batch_norm_without_running_stats_uses_batch_statistics_in_eval() {
    let mut bn = nn::BatchNorm2d::new(1)
        .track_running_stats(false)
        .affine(false);
    assert!(bn.named_buffers().is_empty() && bn.named_parameters().is_empty());
    bn.eval();
    let y = floats(&bn.forward(&Tensor::from_vec(vec![1.0f32, 3.0], [2, 1, 1, 1])));
    let want = 1.0 / (1.0f64 + 1e-5).sqrt();
    assert_close("batch stats", &y, &[-want, want], 1e-6);
}

#[test]
fn batch_norm_input_errors_are_reported() {
    let bn = nn::BatchNorm2d::new(3);
    let e = bn
        .try_forward(&Tensor::zeros([2, 4, 5, 5]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("num_features = 3"), "{e}");
    let e = bn
        .try_forward(&Tensor::zeros([2, 3, 5]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("expected 4D input"), "{e}");
    let e = nn::BatchNorm1d::new(3)
        .try_forward(&Tensor::zeros([1, 3]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("more than 1 value per channel"), "{e}");
}

// ----- dropout -----------------------------------------------------------------------------

#[test]
fn dropout_is_reproducible_from_a_seed_and_the_identity_in_eval() {
    let x = Tensor::ones([200, 500]);
    let a = nn::Dropout::new(0.3).seed(42);
    let b = nn::Dropout::new(0.3).seed(42);
    let ya = floats(&a.forward(&x));
    assert_eq!(ya, floats(&b.forward(&x)));
    // The stream advances: the next call draws another mask.
    let ya2 = floats(&a.forward(&x));
    assert_ne!(ya, ya2);
    assert_eq!(ya2, floats(&b.forward(&x)));
    assert_ne!(ya, floats(&nn::Dropout::new(0.3).seed(43).forward(&x)));
    // Kept elements are scaled by 1 / (1 - p); about p of them are dropped.
    let scale = 1.0 / 0.7;
    assert!(ya.iter().all(|&v| v == 0.0 || (v - scale).abs() < 1e-6));
    let dropped = ya.iter().filter(|&&v| v == 0.0).count() as f64 / ya.len() as f64;
    assert!((dropped - 0.3).abs() < 0.01, "dropped {dropped}");
    // The gradient is the same mask.
    let xg = Tensor::ones([200, 500]).requires_grad_(true);
    let d = nn::Dropout::new(0.3).seed(42);
    d.forward(&xg).sum_all().backward();
    assert_eq!(floats(&xg.grad().unwrap()), ya);

    let mut d = nn::Dropout::new(0.3).seed(42);
    d.eval();
    let xr = Tensor::randn_with([10, 10], DType::F32, &mut Generator::new(0));
    assert_eq!(floats(&d.forward(&xr)), floats(&xr));
    d.train();
    assert_ne!(floats(&d.forward(&xr)), floats(&xr));

    assert_eq!(floats(&nn::Dropout::new(0.0).forward(&xr)), floats(&xr));
    assert!(floats(&nn::Dropout::new(1.0).forward(&xr))
        .iter()
        .all(|&v| v == 0.0));
    assert!(nn::Dropout::try_new(1.5).is_err() && nn::Dropout::try_new(-0.1).is_err());
    // Functional form with an explicit generator.
    let f1 = F::dropout(&x, 0.5, true, &mut Generator::new(9));
    let f2 = F::dropout(&x, 0.5, true, &mut Generator::new(9));
    assert_eq!(floats(&f1), floats(&f2));
    assert_eq!(
        floats(&F::dropout(&x, 0.5, false, &mut Generator::new(9))),
        floats(&x)
    );
}

// ----- activations and losses ------------------------------------------------------------------

/// Reference values: erf from tables (Abramowitz & Stegun), Phi(x) = (1 + erf(x/sqrt 2))/2.
const ERF: [(f64, f64); 7] = [
    (0.0, 0.0),
    (0.1, 0.112_462_916_018_284_9),
    (0.5, 0.520_499_877_813_046_5),
    (1.0, 0.842_700_792_949_714_9),
    (-1.5, -0.966_105_146_475_310_8),
    (2.0, 0.995_322_265_018_952_7),
    (3.0, 0.999_977_909_503_001_4),
];
const PHI: [(f64, f64); 6] = [
    (-6.0, 9.865_876_450_376_98e-10),
    (-3.0, 0.001_349_898_031_630_095),
    (-1.0, 0.158_655_253_931_457_05),
    (0.5, 0.691_462_461_274_013_1),
    (1.0, 0.841_344_746_068_542_9),
    (2.0, 0.977_249_868_051_820_8),
];

#[test]
fn erf_and_exact_gelu_match_reference_values() {
    let xs: Vec<f64> = ERF.iter().map(|p| p.0).collect();
    let got = floats(&F::erf(&Tensor::from_slice(&xs)));
    for (g, (x, w)) in got.iter().zip(ERF) {
        assert!((g - w).abs() < 2e-7, "erf({x}) = {g}, want {w}");
    }
    // GELU(x) = x Phi(x); its derivative Phi(x) + x phi(x).
    let xs: Vec<f64> = PHI.iter().map(|p| p.0).collect();
    let x = Tensor::from_slice(&xs).requires_grad_(true);
    let y = nn::GELU::default().forward(&x);
    y.sum_all().backward();
    let (yv, gv) = (floats(&y), floats(&x.grad().unwrap()));
    for (i, (x, phi)) in PHI.iter().enumerate() {
        let want = x * phi;
        assert!(
            (yv[i] - want).abs() <= 1e-7 * x.abs() + 1e-6 * want.abs(),
            "gelu({x}) = {}, want {want}",
            yv[i]
        );
        let dens = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let dwant = phi + x * dens;
        assert!(
            (gv[i] - dwant).abs() < 2e-6,
            "gelu'({x}) = {}, want {dwant}",
            gv[i]
        );
    }
    // The tail keeps its relative accuracy: GELU(-6) = -6 Phi(-6) ~ -5.9e-9.
    assert!((yv[0] / (-6.0 * PHI[0].1) - 1.0).abs() < 1e-5, "{}", yv[0]);
    // Gradient at 0 is Phi(0) = 1/2.
    let z = Tensor::from_slice(&[0.0f64]).requires_grad_(true);
    F::gelu(&z).sum_all().backward();
    assert!((z.grad().unwrap().item() - 0.5).abs() < 1e-7);
    // The tanh form, by its formula.
    let t = nn::GELU {
        approximate: nn::GeluApproximate::Tanh,
    }
    .forward(&Tensor::from_slice(&[1.0f64]))
    .item();
    let want = 0.5 * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * 1.044715f64).tanh());
    assert!((t - want).abs() < 1e-12);
}

#[test]
fn activation_layers_compute_their_formulas() {
    let xs = [-2.0f64, -0.5, 0.0, 0.5, 3.0];
    let x = Tensor::from_slice(&xs);
    type Case = (Box<dyn Module>, Box<dyn Fn(f64) -> f64>);
    let cases: Vec<Case> = vec![
        (Box::new(nn::ReLU), Box::new(|v: f64| v.max(0.0))),
        (
            Box::new(nn::LeakyReLU::default()),
            Box::new(|v: f64| if v > 0.0 { v } else { 0.01 * v }),
        ),
        (
            Box::new(nn::Sigmoid),
            Box::new(|v: f64| 1.0 / (1.0 + (-v).exp())),
        ),
        (Box::new(nn::Tanh), Box::new(|v: f64| v.tanh())),
        (
            Box::new(nn::Activation::LeakyReLU(0.2)),
            Box::new(|v: f64| if v > 0.0 { v } else { 0.2 * v }),
        ),
    ];
    for (m, f) in cases {
        let want: Vec<f64> = xs.iter().map(|&v| f(v)).collect();
        assert_close("activation", &floats(&m.forward(&x)), &want, 1e-12);
    }
}

#[test]
fn soft_dice_loss_and_one_hot_follow_their_definitions() {
    // p and t over [N=1, C=2, 4]: dice_c = (2 sum p t + s) / (sum p + sum t + s).
    let p = [0.9, 0.8, 0.2, 0.1, 0.1, 0.2, 0.8, 0.9];
    let y = Tensor::from_vec(vec![0i64, 0, 0, 1], [1, 4]);
    let t = F::one_hot(&y, 2).unwrap();
    assert_eq!(t.shape(), &[1, 4, 2]);
    assert_eq!(t.to_vec::<i64>(), vec![1, 0, 1, 0, 1, 0, 0, 1]);
    let t = t.permute(&[0, 2, 1]);
    let tv = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
    let s = 1e-5;
    let dice = |c: usize| {
        let r = c * 4..c * 4 + 4;
        let i: f64 = r.clone().map(|k| p[k] * tv[k]).sum();
        let sp: f64 = r.clone().map(|k| p[k]).sum();
        let st: f64 = r.map(|k| tv[k]).sum();
        (2.0 * i + s) / (sp + st + s)
    };
    let want = 1.0 - (dice(0) + dice(1)) / 2.0;
    let input = Tensor::from_vec(p.to_vec(), [1, 2, 4]);
    let l = F::soft_dice_loss(&input, &t, s, Reduction::Mean);
    assert!((l.item() - want).abs() < 1e-12, "{} vs {want}", l.item());
    let per = F::soft_dice_loss(&input, &t, s, Reduction::None);
    assert_eq!(per.shape(), &[1, 2]);
    assert!(F::one_hot(&Tensor::from_slice(&[0i64, 3]), 3).is_err());
    assert!(F::try_soft_dice_loss(&input, &Tensor::zeros([1, 2, 3]), s, Reduction::Mean).is_err());
}

// ----- containers, modes and state dicts ---------------------------------------------------------

#[test]
fn sequential_names_its_children_by_position_and_propagates_the_mode() {
    let mut g = Generator::new(0);
    let mut seq = nn::Sequential::new()
        .append(nn::Linear::new(3, 4, true, &mut g))
        .append(nn::BatchNorm1d::new(4))
        .append(nn::ReLU)
        .append(nn::Dropout::new(0.5))
        .append(nn::Linear::new(4, 2, false, &mut g));
    let names: Vec<String> = seq.state_dict().keys().map(String::from).collect();
    assert_eq!(
        names,
        [
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "4.weight"
        ]
    );
    assert_eq!(seq.num_parameters(), 3 * 4 + 4 + 4 + 4 + 4 * 2);
    assert_eq!(seq.named_buffers().len(), 3);
    let (n, p) = &seq.named_parameters()[4];
    assert_eq!(
        (n.as_str(), p.name().as_deref()),
        ("4.weight", Some("4.weight"))
    );
    assert_eq!(seq.forward(&Tensor::ones([5, 3])).shape(), &[5, 2]);
    seq.eval();
    assert!(!seq.is_training());
    assert!(!seq.get(1).unwrap().is_training() && !seq.get(3).unwrap().is_training());
    seq.train();
    assert!(seq.get(1).unwrap().is_training() && seq.get(3).unwrap().is_training());
}

#[test]
fn load_state_dict_reports_shape_mismatches_and_missing_and_unexpected_keys() {
    let net = nn::LeNet::new(&mut Generator::new(0));
    let before = floats(&net.conv1.weight);
    let mut sd = nn::LeNet::new(&mut Generator::new(1)).state_dict();
    sd.insert("conv1.weight", Tensor::zeros([6, 1, 5, 5]));
    let e = net.load_state_dict(&sd, true).err().unwrap();
    let msg = e.to_string();
    assert!(matches!(e, kiln::Error::Data { .. }));
    assert!(
        msg.contains("conv1.weight")
            && msg.contains("[6, 1, 5, 5]")
            && msg.contains("[6, 1, 3, 3]"),
        "{msg}"
    );
    // Nothing was written: the load is all or nothing.
    assert_eq!(floats(&net.conv1.weight), before);

    let mut sd = nn::LeNet::new(&mut Generator::new(1)).state_dict();
    let fc3_bias = floats(sd.get("fc3.bias").unwrap());
    sd.remove("fc2.bias");
    sd.insert("fc4.weight", Tensor::zeros([2, 2]));
    let msg = net.load_state_dict(&sd, true).err().unwrap().to_string();
    assert!(msg.contains("missing keys: fc2.bias"), "{msg}");
    assert!(msg.contains("unexpected keys: fc4.weight"), "{msg}");
    assert_eq!(floats(&net.conv1.weight), before);
    // Not strict: the matching tensors load and the rest is reported.
    let report = net.load_state_dict(&sd, false).unwrap();
    assert_eq!(report.missing_keys, ["fc2.bias"]);
    assert_eq!(report.unexpected_keys, ["fc4.weight"]);
    assert_eq!(floats(net.fc3.bias.as_ref().unwrap()), fc3_bias);
    // A shape mismatch is an error even when not strict, as in PyTorch.
    sd.insert("fc1.bias", Tensor::zeros([3]));
    assert!(net.load_state_dict(&sd, false).is_err());
    // Parameters keep their identity (optimisers hold them) and stay leaves requiring grad.
    assert!(net.conv1.weight.requires_grad() && net.conv1.weight.is_leaf());
}

// ----- U-Net options ---------------------------------------------------------------------

#[test]
fn unet3d_options_add_batch_norm_residuals_dropout_and_deep_supervision() {
    let opts = nn::UNet3dOptions {
        batch_norm: true,
        dropout: 0.2,
        residual: true,
        deep_supervision: true,
        activation: nn::Activation::LeakyReLU(0.01),
    };
    let mut net = nn::UNet3d::new(1, 3, 2, opts, &mut Generator::new(0)).unwrap();
    let sd = net.state_dict();
    for k in [
        "conv1.weight",
        "bn1.weight",
        "bn1.running_mean",
        "bn1.num_batches_tracked",
        "res1.weight",
        "res4.bias",
        "bn7.running_var",
        "aux1.weight",
        "aux2.bias",
        "conv8.bias",
    ] {
        assert!(sd.contains_key(k), "{k} missing from {sd:?}");
    }
    // Convolutions followed by batch norm have no bias; equal-width blocks have no projection.
    assert!(!sd.contains_key("conv1.bias") && !sd.contains_key("res5.weight"));
    assert_eq!(sd.get("aux1.weight").unwrap().shape(), &[3, 4, 1, 1, 1]);
    assert_eq!(sd.get("aux2.weight").unwrap().shape(), &[3, 8, 1, 1, 1]);
    let x = Tensor::randn_with([2, 1, 8, 8, 8], DType::F32, &mut Generator::new(1));
    let outs = net.forward_deep(&x).unwrap();
    let shapes: Vec<&[usize]> = outs.iter().map(|t| t.shape()).collect();
    assert_eq!(
        shapes,
        [&[2, 3, 8, 8, 8][..], &[2, 3, 4, 4, 4], &[2, 3, 2, 2, 2]]
    );
    // Probabilities over the class axis.
    let s = floats(&outs[2].sum(&[1], false));
    assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-5));
    // A training step reaches every parameter, and the running statistics move.
    let loss = outs
        .iter()
        .map(|o| o.mean_all())
        .fold(Tensor::scalar(0.0f32), |a, b| a.add(&b));
    let loss = loss.add(&outs[0].mul(&outs[0]).mean_all());
    loss.backward();
    for (n, p) in net.named_parameters() {
        assert!(p.grad().is_some(), "{n} has no gradient");
    }
    assert_eq!(
        net.bn[0]
            .as_ref()
            .unwrap()
            .num_batches_tracked
            .as_ref()
            .unwrap()
            .to_vec::<i64>(),
        vec![1]
    );
    assert!(
        floats(net.bn[0].as_ref().unwrap().running_mean.as_ref().unwrap())
            .iter()
            .any(|&v| v != 0.0)
    );
    net.eval();
    assert!(net.bn.iter().all(|b| !b.as_ref().unwrap().is_training()));
    assert!(!net.dropout.as_ref().unwrap().is_training());
    let a = floats(&net.forward(&x));
    assert_eq!(a, floats(&net.forward(&x)), "eval is deterministic");
    // Bad inputs and options are errors.
    let e = net
        .try_forward(&Tensor::zeros([1, 1, 12, 8, 8]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("multiples of 8"), "{e}");
    assert!(net.try_forward(&Tensor::zeros([1, 2, 8, 8, 8])).is_err());
    let bad = nn::UNet3dOptions {
        dropout: 1.0,
        ..Default::default()
    };
    assert!(nn::UNet3d::new(2, 2, 2, bad, &mut Generator::new(0)).is_err());
    assert!(nn::UNet3d::new(0, 2, 2, Default::default(), &mut Generator::new(0)).is_err());
}

#[test]
fn batch_norm_buffers_update_across_runs_of_a_compiled_step() {
    let bn = nn::BatchNorm1d::new(2);
    let x1 = [[1.0, -2.0], [2.0, 0.0], [4.0, 1.0], [5.0, 5.0]];
    let x2 = [[0.0, 3.0], [-1.0, 3.5], [3.0, 2.0], [6.0, -4.0]];
    let t = |x: &[[f64; 2]]| {
        Tensor::from_vec(
            x.iter().flatten().map(|&v| v as f32).collect::<Vec<f32>>(),
            [x.len(), 2],
        )
    };
    let step = kiln::compile::compile(&[&t(&x1)], |ins| {
        let y = bn.forward(&ins[0]);
        Ok(vec![y.sum_all()])
    })
    .unwrap();
    // Tracing records the updates; it does not perform them.
    assert_eq!(floats(bn.running_mean.as_ref().unwrap()), vec![0.0, 0.0]);
    let (mut rm, mut rv) = ([0.0, 0.0], [1.0, 1.0]);
    for x in [&x1, &x2] {
        step.run(&[&t(x)]).unwrap();
        let st = channel_stats(x);
        for c in 0..2 {
            rm[c] = 0.9 * rm[c] + 0.1 * st[c].0;
            rv[c] = 0.9 * rv[c] + 0.1 * st[c].2;
        }
        assert_close(
            "compiled running_mean",
            &floats(bn.running_mean.as_ref().unwrap()),
            &rm,
            1e-6,
        );
        assert_close(
            "compiled running_var",
            &floats(bn.running_var.as_ref().unwrap()),
            &rv,
            1e-6,
        );
    }
    assert_eq!(
        bn.num_batches_tracked.as_ref().unwrap().to_vec::<i64>(),
        vec![2]
    );
}

#[test]
fn training_mode_dropout_is_refused_inside_a_compiled_step() {
    let x = Tensor::ones([4, 4]);
    let mut d = nn::Dropout::new(0.5).seed(1);
    let e = kiln::compile::compile(&[&x], |ins| Ok(vec![d.try_forward(&ins[0])?.sum_all()]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("compiled step") && e.contains("dropout"), "{e}");
    // In eval mode it is the identity, which traces fine.
    d.eval();
    let step =
        kiln::compile::compile(&[&x], |ins| Ok(vec![d.try_forward(&ins[0])?.sum_all()])).unwrap();
    assert_eq!(step.run(&[&x]).unwrap()[0].item(), 16.0);
}
