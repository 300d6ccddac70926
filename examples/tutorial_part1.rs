//! Part 1 of the tutorial ("Performing medical imaging segmentation like a pro"), cell by cell,
//! in Rust: tensors, the ndarray bridge, devices, autograd, LeNet, a loss, backprop and SGD.
//!
//! Run: `cargo run --release --example tutorial_part1`

use kiln::functional::{self as F, Reduction};
use kiln::nn::{LeNet, Module};
use kiln::optim::Sgd;
use kiln::{Device, Generator, Tensor};
use ndarray::ArrayD;

fn cell(title: &str) {
    println!("\n# {title}");
}

fn main() -> kiln::Result<()> {
    let mut g = Generator::new(0);

    cell("Tensors: an elementwise product");
    let a = Tensor::ones([2, 3]);
    let b = Tensor::full([2, 3], 2.0, kiln::DType::F32);
    println!("{a}\n*\n{b}\n=\n{}", &a * &b);

    cell("ndarray bridge: a tensor and the ndarray viewing it share memory");
    let mut t = Tensor::ones([5]);
    println!("t = {t}");
    {
        let view = t.ndarray::<f32>()?;
        println!(
            "as ndarray: {} (same buffer: {})",
            view.view(),
            view.view().as_ptr() as usize == t.data_ptr().unwrap()
        );
    }
    t.add_(1.0)?; // in place, like t.add_(1)
    println!(
        "after t.add_(1): t = {t}, ndarray view = {}",
        t.ndarray::<f32>()?.view()
    );

    cell("ndarray bridge: a tensor made from an ndarray keeps its buffer");
    let arr = ArrayD::<f64>::ones(ndarray::IxDyn(&[5]));
    let ptr = arr.as_ptr() as usize;
    let t = Tensor::from_ndarray(arr);
    println!("zero-copy: {}", t.data_ptr() == Some(ptr));
    {
        let mut m = t.ndarray_mut::<f64>()?;
        m.view_mut().mapv_inplace(|v| v + 1.0); // np.add(a, 1, out=a)
    }
    println!("after adding 1 through the ndarray: t = {t}");

    cell("Devices");
    let device = Device::cuda_if_available();
    match Tensor::ones([2]).to_device(Device::Cuda(0)) {
        Ok(_) => println!("moved to cuda:0"),
        Err(e) => println!("no GPU here ({e}); continuing on {device}"),
    }
    let x = Tensor::ones([2, 2]).to_device(device)?;
    println!("{x} on {}", x.device());

    cell("Autograd");
    let x = Tensor::ones([2, 2]).requires_grad_(true);
    println!("x = {x}");
    let y = &x + 2.0;
    println!("y = {y}");
    println!("y.grad_fn = {:?}", y.grad_fn());
    let z = &y * &y * 3.0;
    let out = z.mean_all();
    println!("z = {z}\nout = {out}");
    out.backward();
    println!("x.grad = {}", x.grad().expect("x requires grad"));

    cell("LeNet");
    let net = LeNet::new(&mut g);
    println!("LeNet: conv1 1->6 k3, pool 2, conv2 6->16 k3, pool 2, fc 576->120->84->10");
    for (name, p) in net.named_parameters() {
        println!("  {name:<12} {:?}", p.shape());
    }
    println!("parameters: {}", net.num_parameters());
    let input = Tensor::randn_with([1, 1, 32, 32], kiln::DType::F32, &mut g);
    let output = net.forward(&input);
    println!("output = {output}");

    cell("Loss");
    let target = Tensor::randn_with([1, 10], kiln::DType::F32, &mut g);
    let loss = F::mse_loss(&output, &target, Reduction::Mean);
    println!("loss = {loss}");
    println!("loss.grad_fn = {:?}", loss.grad_fn());

    cell("Backprop");
    net.zero_grad();
    println!(
        "conv1.bias.grad before backward: {:?}",
        net.conv1
            .bias
            .as_ref()
            .unwrap()
            .grad()
            .map(|g| g.to_string())
    );
    loss.backward();
    println!(
        "conv1.bias.grad after backward: {}",
        net.conv1.bias.as_ref().unwrap().grad().unwrap()
    );

    cell("Update the weights by hand: weight = weight - learning_rate * gradient");
    let learning_rate = 0.01;
    kiln::no_grad(|| -> kiln::Result<()> {
        for mut p in net.parameters() {
            let grad = p.grad().expect("every parameter has a gradient");
            p.sub_(&grad.mul(learning_rate))?;
        }
        Ok(())
    })?;
    let loss_after = F::mse_loss(&net.forward(&input), &target, Reduction::Mean);
    println!("loss after one manual step: {loss_after}");

    cell("Update the weights with an optimizer");
    let mut optimizer = Sgd::new(net.parameters(), 0.01);
    optimizer.zero_grad();
    let output = net.forward(&input);
    let loss = F::mse_loss(&output, &target, Reduction::Mean);
    loss.backward();
    optimizer.step()?;
    let loss_after = F::mse_loss(&net.forward(&input), &target, Reduction::Mean);
    println!(
        "loss before the step: {:.6}, after: {:.6}",
        loss.item(),
        loss_after.item()
    );
    Ok(())
}
