"""Shared by the PyTorch sides of `kiln bench` (src/cli/bench/): arguments, timing, FLOP
counting and the JSON lines.

Each script in this directory is one workload; `kiln bench WORKLOAD --compare-torch` runs it
as a child process, and it runs by hand as well:

    python bench/torch/lenet_train.py [--batch 1,64,256] [--threads 2] [--iters N] [--budget 1]

It prints one JSON line per measurement on stdout, with the same keys as kiln's:
{"name", "backend", "batch", "median_ms", "min_ms", "gflops", "compile_ms", "iters",
"params", "processes", "speedup"}, and progress on stderr. The timing is kiln's
(src/cli/bench/measure.rs): a first call, warm-up (at least one call, more until 0.2 s have
passed, at most 50), then --iters timed iterations, or by default enough for --budget seconds,
20 to 2000.
"""

import argparse
import json
import math
import sys
import time

try:
    import torch
    import torch.nn as nn
except ImportError as e:  # a clear message instead of a traceback
    sys.exit(f"torch is not importable from {sys.executable}: {e} (pip install torch)")

MIN_ITERS = 20
MAX_ITERS = 2000
WARMUP_SECONDS = 0.2
MAX_WARMUP = 50


def parse_args(default_batches):
    """The scripts' common arguments; `default_batches` is None for workloads without a batch."""
    p = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__)
    if default_batches is not None:
        p.add_argument("--batch", default=",".join(map(str, default_batches)),
                       help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default: by --budget)")
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timed iterations")
    a = p.parse_args()
    if default_batches is not None:
        try:
            a.batches = [int(b) for b in a.batch.split(",")]
        except ValueError:
            p.error(f"--batch: expected comma-separated integers, got {a.batch!r}")
        if any(b < 1 for b in a.batches):
            p.error("--batch: sizes must be at least 1")
    else:
        a.batches = [None]
    if a.threads < 1 or (a.iters is not None and a.iters < 1) or not a.budget > 0:
        p.error("--threads, --iters and --budget must be positive")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    return a


def quantile(v, q):
    """The q-quantile of sorted v by linear interpolation (numpy's default; kiln's)."""
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def iterations(args, one):
    if args.iters is not None:
        return args.iters
    return min(max(math.ceil(args.budget / max(one, 1e-9)), MIN_ITERS), MAX_ITERS)


def measure(body, args):
    """Times body(): returns (first_ms, median_ms, min_ms, iters)."""
    t = time.perf_counter()
    body()
    first = time.perf_counter() - t
    warm = time.perf_counter()
    one = math.inf
    for k in range(MAX_WARMUP):
        if k > 0 and time.perf_counter() - warm >= WARMUP_SECONDS:
            break
        t = time.perf_counter()
        body()
        one = min(one, time.perf_counter() - t)
    n = iterations(args, one)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        body()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return first * 1e3, quantile(times, 0.5), times[0], n


def forward_flops(model, *inputs):
    """FLOPs of one forward pass of `model`: 2 per multiply-add of its Conv, ConvTranspose and
    Linear layers, counted with forward hooks (kiln counts the same analytically)."""
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            kvol = math.prod(m.kernel_size)
            total[0] += 2 * out.numel() * (m.in_channels // m.groups) * kvol
        elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            kvol = math.prod(m.kernel_size)
            total[0] += 2 * inp[0].numel() * (m.out_channels // m.groups) * kvol
        elif isinstance(m, nn.Linear):
            total[0] += 2 * out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def params(model):
    return sum(p.numel() for p in model.parameters())


def report(name, backend, batch, timing, flops=None, nparams=None, compile_ms=None):
    """Prints the JSON line of one measurement, and a progress line on stderr."""
    first_ms, median_ms, min_ms, n = timing
    line = {
        "name": name,
        "backend": backend,
        "batch": batch,
        "median_ms": round(median_ms, 4),
        "min_ms": round(min_ms, 4),
        "gflops": None if flops is None else round(flops / (median_ms * 1e6), 4),
        "compile_ms": None if compile_ms is None else round(compile_ms, 4),
        "iters": n,
        "params": nparams,
        "processes": 1,
        "speedup": None,
    }
    print(json.dumps(line), flush=True)
    b = "" if batch is None else f" batch {batch}"
    print(f"{backend:<13} {name:<13}{b:<10} median {median_ms:.3f} ms, min {min_ms:.3f} ms, "
          f"first call {first_ms:.1f} ms, x{n}", file=sys.stderr, flush=True)


def training_step(model, opt, loss_fn, x, y):
    """zero_grad, forward, loss, backward, step; returns the loss (`loss.item()` waits for it)."""

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        loss = loss.item()
        if not math.isfinite(loss):
            raise RuntimeError(f"the loss is {loss}")
        return loss

    return step


def inference(model, x):
    model.eval()

    def run():
        with torch.no_grad():
            return model(x)

    return run
