"""PyTorch side of `kiln bench fusion`: the elementwise chain
sum(clamp(exp(relu(x*1.5+0.5)*x), max=10) - sigmoid(x)) on 4M floats, forward only, in eager
mode (backend "torch") and through torch.compile (backend "torch-compile", whose compile_ms is
its first call: compilation and one run)."""

# common first: it exits with a clear message when torch is missing.
from common import measure, parse_args, report
import torch

N = 4 << 20


def chain(x):
    return (torch.clamp(torch.exp(torch.relu(x * 1.5 + 0.5) * x), max=10) - torch.sigmoid(x)).sum()


def main():
    a = parse_args(None)
    x = torch.randn(N)
    report("fusion", "torch", None, measure(lambda: chain(x).item(), a))
    compiled = torch.compile(chain)
    timing = measure(lambda: compiled(x).item(), a)
    report("fusion", "torch-compile", None, timing, compile_ms=timing[0])


if __name__ == "__main__":
    main()
