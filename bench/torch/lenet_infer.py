"""PyTorch side of `kiln bench lenet-infer`: the tutorial's LeNet forward pass (eval mode,
no grad)."""

# common first: it exits with a clear message when torch is missing.
from common import forward_flops, inference, measure, params, parse_args, report
from models import LeNet
import torch


def main():
    a = parse_args([1, 64, 256])
    for b in a.batches:
        model = LeNet()
        x = torch.randn(b, 1, 32, 32)
        flops = forward_flops(model, x)
        timing = measure(inference(model, x), a)
        report("lenet-infer", "torch", b, timing, flops, params(model))


if __name__ == "__main__":
    main()
