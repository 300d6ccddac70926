"""PyTorch side of `kiln bench conv2d`: Conv2d 64->64, 3x3, padding 1 with bias on
[N, 64, 56, 56], forward and backward: sum() of the output, gradients of x, w and b."""

# common first: it exits with a clear message when torch is missing.
from common import measure, parse_args, report
import torch
import torch.nn.functional as F

C, HW = 64, 56


def main():
    a = parse_args([16])
    for b in a.batches:
        x = torch.randn(b, C, HW, HW, requires_grad=True)
        w = torch.randn(C, C, 3, 3, requires_grad=True)
        bias = torch.randn(C, requires_grad=True)

        def run():
            loss = F.conv2d(x, w, bias, padding=1).sum()
            return torch.autograd.grad(loss, [x, w, bias])

        flops = 3 * 2 * b * C * HW * HW * C * 9
        report("conv2d", "torch", b, measure(run, a), flops)


if __name__ == "__main__":
    main()
