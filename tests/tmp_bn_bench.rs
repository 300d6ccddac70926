use kiln::nn::{self, Module};
use kiln::{DType, Generator, Tensor};
#[test]
fn bench() {
    let opts = nn::UNet3dOptions { batch_norm: true, ..Default::default() };
    let net = nn::UNet3d::new(2, 2, 4, opts, &mut Generator::new(0)).unwrap();
    let x = Tensor::randn_with([1, 2, 16, 16, 16], DType::F32, &mut Generator::new(1));
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let y = net.forward(&x);
        let t1 = t.elapsed();
        y.mean_all().backward();
        println!("forward {:?} total {:?}", t1, t.elapsed());
    }
}
