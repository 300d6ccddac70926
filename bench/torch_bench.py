"""PyTorch (CPU) side of kiln's benchmark harness (src/bin/kiln_bench.rs).

Runs the same workloads as kiln_bench, with the same shapes and the same kind of random
initialisation, and prints progress on stderr and, as its last line of stdout, one JSON object:
{"torch": version, "threads": n, "results": {name: {"median", "q1", "q3", "reps"}}} (seconds).
kiln_bench launches it; by hand:

    python bench/torch_bench.py [--threads 2] [--seconds 2] [--reps N] [--only a,b]

Each workload warms up twice (oneDNN primitive creation), then repeats for about --seconds
(at least 5 times); medians and quartiles, because the machine is shared and noisy.
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def matmul_512():
    a = torch.randn(512, 512)
    b = torch.randn(512, 512)
    return lambda: torch.mm(a, b)


def training_step(model, opt, loss_fn, x, y):
    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def mlp_step():
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(64, 784)
    y = torch.randint(0, 10, (64,))
    return training_step(model, opt, F.cross_entropy, x, y)


class LeNet(nn.Module):
    """kiln::nn::models::LeNet: conv 1->6 k3, pool 2, conv 6->16 k3, pool 2, 576-120-84-10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.fc1 = nn.Linear(16 * 6 * 6, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def lenet_step():
    model = LeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(64, 1, 32, 32)
    y = torch.randint(0, 10, (64,))
    return training_step(model, opt, F.cross_entropy, x, y)


def conv2d_fwd_bwd():
    x = torch.randn(32, 16, 32, 32, requires_grad=True)
    w = torch.randn(32, 16, 3, 3, requires_grad=True)
    b = torch.randn(32, requires_grad=True)

    def run():
        loss = F.conv2d(x, w, b, padding=1).sum()
        return torch.autograd.grad(loss, [x, w, b])

    return run


class UNet3d(nn.Module):
    """kiln::nn::models::UNet3d with default options (the tutorial's network)."""

    def __init__(self, cin, cout, b):
        super().__init__()
        c3 = lambda i, o: nn.Conv3d(i, o, 3, padding=1)  # noqa: E731
        self.conv1 = c3(cin, b)
        self.pool1 = nn.Conv3d(b, b, 2, stride=2)
        self.conv2 = c3(b, 2 * b)
        self.pool2 = nn.Conv3d(2 * b, 2 * b, 2, stride=2)
        self.conv3 = c3(2 * b, 4 * b)
        self.pool3 = nn.Conv3d(4 * b, 4 * b, 2, stride=2)
        self.conv4 = c3(4 * b, 8 * b)
        self.up1 = nn.ConvTranspose3d(8 * b, 4 * b, 2, stride=2)
        self.conv5 = c3(4 * b, 4 * b)
        self.up2 = nn.ConvTranspose3d(4 * b, 2 * b, 2, stride=2)
        self.conv6 = c3(2 * b, 2 * b)
        self.up3 = nn.ConvTranspose3d(2 * b, b, 2, stride=2)
        self.conv7 = c3(b, b)
        self.conv8 = nn.Conv3d(b, cout, 1)

    def forward(self, x):
        x1 = F.relu(self.conv1(x))
        x2 = F.relu(self.conv2(self.pool1(x1)))
        x3 = F.relu(self.conv3(self.pool2(x2)))
        x4 = F.relu(self.conv4(self.pool3(x3)))
        x5 = F.relu(self.conv5(self.up1(x4) + x3))
        x6 = F.relu(self.conv6(self.up2(x5) + x2))
        x7 = F.relu(self.conv7(self.up3(x6) + x1))
        return F.softmax(self.conv8(x7), dim=1)


def unet_step(base):
    def make():
        model = UNet3d(2, 2, base)
        opt = torch.optim.Adadelta(model.parameters())
        x = torch.randn(2, 2, 32, 32, 32)
        t = torch.rand(2, 2, 32, 32, 32)
        return training_step(model, opt, F.mse_loss, x, t)

    return make


def softmax_ce_3d():
    x = torch.randn(2, 4, 32, 32, 32, requires_grad=True)
    y = torch.randint(0, 4, (2, 32, 32, 32))

    def run():
        loss = F.cross_entropy(x, y)
        return torch.autograd.grad(loss, [x])

    return run


WORKLOADS = {
    "matmul_512": matmul_512,
    "mlp_step": mlp_step,
    "lenet_step": lenet_step,
    "conv2d_fwd_bwd": conv2d_fwd_bwd,
    "unet3d_b8_step": unet_step(8),
    "unet3d_b16_step": unet_step(16),
    "softmax_ce_3d": softmax_ce_3d,
}


def quantile(v, q):
    """numpy's default (linear) quantile of sorted v; same as kiln_bench's."""
    pos = q * (len(v) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def measure(body, seconds, reps):
    body()
    t = time.perf_counter()
    body()
    one = time.perf_counter() - t
    n = reps or min(max(int(-(-seconds // max(one, 1e-9))), 5), 1000)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        body()
        times.append(time.perf_counter() - t)
    times.sort()
    return {
        "median": statistics.median(times),
        "q1": quantile(times, 0.25),
        "q3": quantile(times, 0.75),
        "reps": n,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--only", default=None, help="comma-separated workload names")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    names = a.only.split(",") if a.only else list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        sys.exit(f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    results = {}
    for name in names:
        r = measure(WORKLOADS[name](), a.seconds, a.reps)
        results[name] = r
        print(
            f"torch {name:<22} {r['median'] * 1e3:9.3f} "
            f"[{r['q1'] * 1e3:.3f}-{r['q3'] * 1e3:.3f}] x{r['reps']} ms",
            file=sys.stderr,
            flush=True,
        )
    print(json.dumps({"torch": torch.__version__, "threads": a.threads, "results": results}))


if __name__ == "__main__":
    main()
