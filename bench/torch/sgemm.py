"""PyTorch side of `kiln bench sgemm`: 1024x1024 @ 1024x1024 in f32."""

# common first: it exits with a clear message when torch is missing.
from common import measure, parse_args, report
import torch

N = 1024


def main():
    a = parse_args(None)
    x = torch.randn(N, N)
    y = torch.randn(N, N)
    report("sgemm", "torch", None, measure(lambda: torch.mm(x, y), a), 2 * N**3)


if __name__ == "__main__":
    main()
