//! The CUDA backend (feature `cuda`), on any machine:
//!
//! - without a device (this machine with the stub libcuda of `scripts/cuda-stub.sh`, which
//!   sets `KILN_CUDA_STUB=1`): `Device::Cuda(0)` and `KILN_BACKEND=cuda` are clear "no
//!   CUDA-capable device" errors, never panics;
//! - with one (`scripts/gpu-check.sh` on a GPU machine): one training step of LeNet and of
//!   the tutorial's 3-D U-Net (forward, backward, SGD update, as one graph) on the GPU against
//!   the same step on the CPU JIT, a program with every dtype, and the GPU program cache and
//!   caching allocator at work. Without a device these tests say so and pass.
//!
//! The GPU-vs-CPU tests choose their backend per call (`execute_on`), so the binary may run
//! under any `KILN_BACKEND`; `.ci/run` and `gpu-check.sh` run it with `KILN_BACKEND=cuda` so
//! that `realising_a_tensor_follows_kiln_backend` exercises the environment path too.

#![cfg(feature = "cuda")]

use kiln::functional::{self as F, Reduction};
use kiln::nn::{self, Module};
use kiln::{DType, Device, Generator, Tensor};
use kiln_codegen::cuda::runtime;
use kiln_codegen::{execute_on, Backend};
use kiln_ir::{Literal, NodeId};
use std::collections::HashMap;

/// The stub libcuda is in use (set by `scripts/cuda-stub.sh`): a device must not be found.
fn stub() -> bool {
    std::env::var("KILN_CUDA_STUB").is_ok_and(|v| v == "1")
}

/// Whether `cuda:0` can be used; prints why not (the GPU tests then pass vacuously).
fn have_gpu(test: &str) -> bool {
    match runtime::device(0) {
        Ok(d) => {
            eprintln!(
                "{test}: on cuda:0 = {} (sm_{}{})",
                d.name(),
                d.capability().0,
                d.capability().1
            );
            true
        }
        Err(e) => {
            assert!(
                !std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| v == "1"),
                "{test}: KILN_REQUIRE_GPU=1 but cuda:0 cannot be used: {e}"
            );
            eprintln!("{test}: skipped, no usable GPU: {e}");
            false
        }
    }
}

fn no_device_message(msg: &str) {
    assert!(
        msg.contains("no CUDA-capable device"),
        "not the driver's no-device message: {msg}"
    );
}

#[test]
fn without_a_device_the_cuda_device_is_a_clear_error() {
    if !stub() {
        eprintln!("not checked: KILN_CUDA_STUB is not set (a real driver may be present)");
        return;
    }
    let e = runtime::device_count().unwrap_err();
    assert!(e.is_no_device(), "{e:?}");
    let e = runtime::device(0).unwrap_err();
    assert!(e.is_no_device(), "{e:?}");
    no_device_message(&e.to_string());

    let e = Device::Cuda(0).check().unwrap_err();
    assert!(matches!(e, kiln::Error::Device { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("cuda:0") && msg.contains("not available"),
        "{msg}"
    );
    no_device_message(&msg);
    assert!(!kiln::cuda_is_available());
    assert_eq!(Device::cuda_if_available(), Device::Cpu);
    let t = Tensor::from_vec(vec![1.0f32, 2.0], [2]);
    no_device_message(&t.to_device(Device::Cuda(0)).unwrap_err().to_string());
}

#[test]
fn without_a_device_the_cuda_backend_is_a_clear_error() {
    if !stub() {
        eprintln!("not checked: KILN_CUDA_STUB is not set (a real driver may be present)");
        return;
    }
    let mut g = kiln_ir::Graph::new();
    let ty = kiln_ir::TensorType::new(DType::F32, vec![3]);
    let x = g.input("x", ty).unwrap();
    let y = g.add(x, x).unwrap();
    let lit = Literal {
        shape: vec![3],
        data: kiln_ir::Data::F32(vec![1.0, 2.0, 3.0]),
    };
    let b: HashMap<NodeId, &Literal> = [(x, &lit)].into();
    let e = execute_on(Backend::Cuda, &g, &b, &[y]).unwrap_err();
    no_device_message(&e.to_string());
    // The CPU is unaffected.
    let v = execute_on(Backend::Jit, &g, &b, &[y]).unwrap();
    assert_eq!(v[0].data, kiln_ir::Data::F32(vec![2.0, 4.0, 6.0]));
}

/// Realising a tensor goes through `KILN_BACKEND`: with `cuda` and no device, the error (not a
/// panic) names the missing device; with a device, the value is right.
#[test]
fn realising_a_tensor_follows_kiln_backend() {
    if Backend::from_env() != Backend::Cuda {
        eprintln!("not checked: KILN_BACKEND is not cuda");
        return;
    }
    let t = Tensor::from_vec(vec![1.0f32, -2.0, 3.0], [3]);
    let r = (&t * 2.0).relu().try_to_vec::<f32>();
    if stub() {
        no_device_message(&r.unwrap_err().to_string());
    } else if have_gpu("realising_a_tensor_follows_kiln_backend") {
        assert_eq!(r.unwrap(), vec![2.0, 0.0, 6.0]);
    }
}

// ----- on a GPU ---------------------------------------------------------------------------------

/// A training step as one graph: the loss, and every parameter after one SGD step of `lr`.
fn sgd_step(net: &dyn Module, loss: &Tensor, lr: f64) -> Vec<Tensor> {
    let params = net.parameters();
    let refs: Vec<&Tensor> = params.iter().collect();
    let grads = kiln::autograd::grad(loss, &refs, None).unwrap();
    let mut out = vec![loss.clone()];
    for (p, g) in params.iter().zip(grads) {
        let g = g.expect("every parameter has a gradient");
        out.push(&p.detach() - &(&g * lr));
    }
    out
}

/// Runs the graph of `roots` on the CPU JIT and on the GPU; returns the worst error relative
/// to `1 + |cpu|` over all values.
fn cpu_vs_gpu(what: &str, roots: &[Tensor]) -> f64 {
    let mut lw = kiln::lower::lower(roots, false).unwrap();
    let wanted: Vec<NodeId> = roots.iter().map(|t| lw.node_of[&t.id()]).collect();
    for (i, &w) in wanted.iter().enumerate() {
        lw.graph.set_output(format!("out{i}"), w);
    }
    let b: HashMap<NodeId, &Literal> = lw.bound.iter().map(|(n, v)| (*n, v.as_ref())).collect();
    let cpu = execute_on(Backend::Jit, &lw.graph, &b, &wanted).unwrap();
    let t0 = std::time::Instant::now();
    let gpu = execute_on(Backend::Cuda, &lw.graph, &b, &wanted)
        .unwrap_or_else(|e| panic!("{what} on the GPU: {e}"));
    let first = t0.elapsed();
    let t1 = std::time::Instant::now();
    let again = execute_on(Backend::Cuda, &lw.graph, &b, &wanted).unwrap();
    let second = t1.elapsed();
    let mut worst = 0f64;
    for (k, ((c, g), a)) in cpu.iter().zip(&gpu).zip(&again).enumerate() {
        assert_eq!(c.shape, g.shape, "{what}: result {k}");
        assert_eq!(
            g.data, a.data,
            "{what}: result {k} differs between two GPU runs"
        );
        let (c, g) = (c.data.to_f64_vec(), g.data.to_f64_vec());
        for (i, (x, y)) in c.iter().zip(&g).enumerate() {
            let e = (x - y).abs() / (1.0 + x.abs());
            assert!(
                e.is_finite() || (x.is_nan() && y.is_nan()),
                "{what}: result {k}[{i}]: cpu {x} gpu {y}"
            );
            worst = worst.max(e);
        }
    }
    eprintln!(
        "{what}: {} results, worst rel err GPU vs CPU {worst:.2e}; first GPU run {:.1} ms (compile + load), second {:.2} ms",
        gpu.len(),
        first.as_secs_f64() * 1e3,
        second.as_secs_f64() * 1e3
    );
    worst
}

#[test]
fn lenet_training_step_on_the_gpu_matches_the_cpu() {
    if !have_gpu("lenet") {
        return;
    }
    let net = nn::LeNet::new(&mut Generator::new(11));
    let mut g = Generator::new(12);
    let x = Tensor::randn_with([16, 1, 28, 28], DType::F32, &mut g);
    let y = Tensor::randint_with(0, 10, [16], &mut g);
    let loss = F::cross_entropy(&net.forward(&x), &y, None, -100, Reduction::Mean);
    let worst = cpu_vs_gpu("LeNet SGD step", &sgd_step(&net, &loss, 0.05));
    assert!(
        worst < 1e-3,
        "LeNet step: GPU differs from CPU by {worst:.2e}"
    );
}

#[test]
fn unet3d_training_step_on_the_gpu_matches_the_cpu() {
    if !have_gpu("unet3d") {
        return;
    }
    let net = nn::UNet3d::new(2, 3, 4, Default::default(), &mut Generator::new(21)).unwrap();
    let mut g = Generator::new(22);
    let x = Tensor::randn_with([1, 2, 16, 16, 16], DType::F32, &mut g);
    let y = Tensor::randint_with(0, 3, [1, 16, 16, 16], &mut g);
    let logp = net.forward(&x).clamp(Some(1e-7), Some(1.0)).log();
    let loss = F::cross_entropy(&logp, &y, None, -100, Reduction::Mean);
    let worst = cpu_vs_gpu("U-Net 3-D SGD step", &sgd_step(&net, &loss, 0.1));
    assert!(
        worst < 1e-3,
        "U-Net step: GPU differs from CPU by {worst:.2e}"
    );
}

#[test]
fn every_dtype_crosses_the_bus_and_the_caches_are_used() {
    if !have_gpu("dtypes") {
        return;
    }
    let a = Tensor::from_vec(
        (0..1000).map(|i| i as f32 * 0.5 - 100.0).collect(),
        [10, 100],
    );
    let d = Tensor::from_vec((0..1000).map(|i| i as f64 / 7.0).collect(), [10, 100]);
    let i = Tensor::from_vec((0..1000i64).map(|i| i * 3 - 7).collect(), [10, 100]);
    let m = a.gt(0.0);
    let roots = vec![
        a.sum(&[1], true),
        (&d * 2.0).exp().sum_all(),
        &i + &i,
        m.clone(),
        m.to_dtype(DType::F32) * &a,
        i.to_dtype(DType::F64) + &d,
    ];
    let worst = cpu_vs_gpu("dtypes", &roots);
    assert!(worst < 1e-5, "dtypes: {worst:.2e}");
    let dev = runtime::device(0).unwrap();
    let s = dev.alloc_stats();
    assert!(s.reused > 0, "the allocator reused no block: {s:?}");
    assert!(kiln_codegen::cuda::program::cache_stats().hits > 0);
    eprintln!("allocator: {s:?}; {} modules loaded", dev.modules_loaded());
}

/// Parameters resident on the GPU across steps: three SGD steps of LeNet where each step's
/// updated parameters (device values, never downloaded) are the next step's parameters, and
/// only the batch is uploaded; against the same three steps on the CPU.
#[test]
fn parameters_stay_on_the_gpu_across_steps_and_match_the_cpu() {
    if !have_gpu("resident") {
        return;
    }
    use kiln_codegen::cuda::program::Value;
    use kiln_codegen::cuda::{CudaProgram, DeviceTensor};
    use std::sync::Arc;
    let net = nn::LeNet::new(&mut Generator::new(31));
    let mut g = Generator::new(32);
    let x = Tensor::randn_with([8, 1, 28, 28], DType::F32, &mut g);
    let y = Tensor::randint_with(0, 10, [8], &mut g);
    let loss = F::cross_entropy(&net.forward(&x), &y, None, -100, Reduction::Mean);
    let params = net.parameters();
    let roots = sgd_step(&net, &loss, 0.05);
    let lw = kiln::lower::lower(&roots, false).unwrap();
    let wanted: Vec<NodeId> = roots.iter().map(|t| lw.node_of[&t.id()]).collect();
    let node_of_param: Vec<NodeId> = params
        .iter()
        .map(|p| {
            lw.sources
                .iter()
                .find(|(_, t)| t.id() == p.id())
                .expect("a parameter is a bound source")
                .0
        })
        .collect();
    let mut bound: Vec<NodeId> = lw.bound.iter().map(|(n, _)| *n).collect();
    bound.sort();
    let cpu = kiln_codegen::Program::compile(&lw.graph, &wanted, &bound).unwrap();
    let gpu = CudaProgram::compile(&lw.graph, &wanted, &bound, 0).unwrap();
    let dev = gpu.device().clone();

    let mut host: HashMap<NodeId, Arc<Literal>> = lw.bound.iter().cloned().collect();
    let mut resident: HashMap<NodeId, DeviceTensor> = node_of_param
        .iter()
        .map(|n| (*n, DeviceTensor::upload(&dev, &host[n]).unwrap()))
        .collect();
    for step in 0..3 {
        let b: HashMap<NodeId, &Literal> = host.iter().map(|(n, v)| (*n, v.as_ref())).collect();
        let c = cpu.run(&b).unwrap();
        let bv: HashMap<NodeId, Value<'_>> = host
            .iter()
            .map(|(n, v)| match resident.get(n) {
                Some(d) => (*n, Value::Device(d)),
                None => (*n, Value::Host(v.as_ref())),
            })
            .collect();
        let d = gpu.run_device(&bv).unwrap();
        drop(bv);
        let (lc, lg) = (
            c[0].data.get_f64(0),
            d[0].to_literal().unwrap().data.get_f64(0),
        );
        eprintln!("resident step {step}: loss cpu {lc:.6} gpu {lg:.6}");
        assert!(
            (lc - lg).abs() <= 1e-4 * (1.0 + lc.abs()),
            "step {step}: {lc} vs {lg}"
        );
        for (k, n) in node_of_param.iter().enumerate() {
            host.insert(*n, Arc::new(c[1 + k].clone()));
            resident.insert(*n, d[1 + k].clone());
        }
    }
    let mut worst = 0f64;
    for n in &node_of_param {
        let (c, g) = (
            host[n].data.to_f64_vec(),
            resident[n].to_literal().unwrap().data.to_f64_vec(),
        );
        for (a, b) in c.iter().zip(&g) {
            worst = worst.max((a - b).abs() / (1.0 + a.abs()));
        }
    }
    eprintln!("resident: parameters after 3 steps, worst rel err GPU vs CPU {worst:.2e}");
    assert!(worst < 1e-3, "{worst:.2e}");
}

/// The front end on the GPU (run by gpu-check.sh with `KILN_BACKEND=cuda`): a LeNet moved
/// with `Module::to_device`, trained for three steps by a `kiln::compile`d SGD step; its
/// parameters stay on the GPU (`device()`), and the losses and final parameters match the
/// same three steps computed on the CPU JIT.
#[test]
fn a_compiled_step_keeps_module_parameters_on_the_gpu() {
    if Backend::from_env() != Backend::Cuda {
        eprintln!("not checked: KILN_BACKEND is not cuda (compiled steps follow it)");
        return;
    }
    if !have_gpu("compiled resident step") {
        return;
    }
    use kiln::optim::Sgd;
    use std::sync::Arc;
    let lr = 0.05;
    let mut g = Generator::new(42);
    let x = Tensor::randn_with([8, 1, 28, 28], DType::F32, &mut g);
    let y = Tensor::randint_with(0, 10, [8], &mut g);

    // The reference: the same net and steps on the CPU JIT, by hand.
    let cpu_net = nn::LeNet::new(&mut Generator::new(41));
    let loss = F::cross_entropy(&cpu_net.forward(&x), &y, None, -100, Reduction::Mean);
    let params = cpu_net.parameters();
    let roots = sgd_step(&cpu_net, &loss, lr);
    let lw = kiln::lower::lower(&roots, false).unwrap();
    let wanted: Vec<NodeId> = roots.iter().map(|t| lw.node_of[&t.id()]).collect();
    let pnodes: Vec<NodeId> = params
        .iter()
        .map(|p| lw.sources.iter().find(|(_, t)| t.id() == p.id()).unwrap().0)
        .collect();
    let mut host: HashMap<NodeId, Arc<Literal>> = lw.bound.iter().cloned().collect();
    let mut want_losses = Vec::new();
    for _ in 0..3 {
        let b: HashMap<NodeId, &Literal> = host.iter().map(|(n, v)| (*n, v.as_ref())).collect();
        let r = execute_on(Backend::Jit, &lw.graph, &b, &wanted).unwrap();
        want_losses.push(r[0].data.get_f64(0));
        for (k, n) in pnodes.iter().enumerate() {
            host.insert(*n, Arc::new(r[1 + k].clone()));
        }
    }

    // The GPU: module moved, optimiser on its parameters, compiled step.
    let net = nn::LeNet::new(&mut Generator::new(41));
    net.to_device(Device::Cuda(0)).unwrap();
    assert!(net
        .parameters()
        .iter()
        .all(|p| p.device() == Device::Cuda(0)));
    let mut opt = Sgd::new(net.parameters(), lr);
    let step = kiln::compile::compile(&[&x, &y], |b| {
        opt.zero_grad();
        let loss = F::cross_entropy(&net.forward(&b[0]), &b[1], None, -100, Reduction::Mean);
        loss.try_backward(None)?;
        opt.step()?;
        Ok(vec![loss])
    })
    .unwrap();
    for (k, want) in want_losses.iter().enumerate() {
        let out = step.run(&[&x, &y]).unwrap();
        assert_eq!(
            out[0].device(),
            Device::Cuda(0),
            "the loss stays on the GPU until read"
        );
        let got = out[0].item();
        eprintln!("compiled resident step {k}: loss gpu {got:.6} cpu {want:.6}");
        assert!(
            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "step {k}: {got} vs {want}"
        );
        assert!(net
            .parameters()
            .iter()
            .all(|p| p.device() == Device::Cuda(0)));
    }
    let mut worst = 0f64;
    for (p, n) in net.parameters().iter().zip(&pnodes) {
        let got = p.to_vec::<f64>();
        for (a, b) in host[n].data.to_f64_vec().iter().zip(&got) {
            worst = worst.max((a - b).abs() / (1.0 + a.abs()));
        }
    }
    eprintln!("compiled resident step: parameters after 3 steps, worst rel err {worst:.2e}");
    assert!(worst < 1e-3, "{worst:.2e}");
    // Reading them copied them to the host; they are still on the GPU.
    assert!(net
        .parameters()
        .iter()
        .all(|p| p.device() == Device::Cuda(0)));
    let back = net.parameters()[0].to_device(Device::Cpu).unwrap();
    assert_eq!(back.device(), Device::Cpu);
}
