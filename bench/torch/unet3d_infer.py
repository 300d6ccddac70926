"""PyTorch side of `kiln bench unet3d-infer`: the tutorial's 3-D patch U-Net (base 32, input
2x32x32x32) forward pass, eval mode, no grad."""

# common first: it exits with a clear message when torch is missing.
from common import forward_flops, inference, measure, params, parse_args, report
from models import UNET_BASE, UNET_IN, UNET_OUT, UNET_SIDE, Unet3d
import torch


def main():
    a = parse_args([8])
    s = UNET_SIDE
    for b in a.batches:
        model = Unet3d(UNET_IN, UNET_OUT, UNET_BASE)
        x = torch.randn(b, UNET_IN, s, s, s)
        flops = forward_flops(model, x)
        timing = measure(inference(model, x), a)
        report("unet3d-infer", "torch", b, timing, flops, params(model))


if __name__ == "__main__":
    main()
