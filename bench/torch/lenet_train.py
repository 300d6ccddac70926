"""PyTorch side of `kiln bench lenet-train`: the tutorial's LeNet training step (zero-grad,
forward, MSE against a random [B, 10] target, backward, SGD with lr 0.01)."""

# common first: it exits with a clear message when torch is missing.
from common import forward_flops, measure, params, parse_args, report, training_step
from models import LeNet
import torch
import torch.nn.functional as F


def main():
    a = parse_args([1, 64, 256])
    for b in a.batches:
        model = LeNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(b, 1, 32, 32)
        t = torch.randn(b, 10)
        flops = 3 * forward_flops(model, x)
        timing = measure(training_step(model, opt, F.mse_loss, x, t), a)
        report("lenet-train", "torch", b, timing, flops, params(model))


if __name__ == "__main__":
    main()
