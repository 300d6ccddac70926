"""PyTorch side of `kiln bench unet3d-train`: the tutorial's 3-D patch U-Net (base 32, input
2x32x32x32) training step: zero-grad, forward, cross-entropy on log(clamp(softmax)) with label
2 ignored, backward, Adadelta (defaults)."""

# common first: it exits with a clear message when torch is missing.
from common import forward_flops, measure, params, parse_args, report, training_step
from models import UNET_BASE, UNET_IN, UNET_OUT, UNET_SIDE, Unet3d, unet_loss
import torch


def main():
    a = parse_args([1, 2])
    s = UNET_SIDE
    for b in a.batches:
        model = Unet3d(UNET_IN, UNET_OUT, UNET_BASE)
        opt = torch.optim.Adadelta(model.parameters())
        x = torch.randn(b, UNET_IN, s, s, s)
        y = torch.randint(0, 3, (b, s, s, s))
        flops = 3 * forward_flops(model, x)
        timing = measure(training_step(model, opt, unet_loss, x, y), a)
        report("unet3d-train", "torch", b, timing, flops, params(model))


if __name__ == "__main__":
    main()
