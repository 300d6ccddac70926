"""PyTorch (CPU) timings of the cases of contract_bench.rs, for a same-machine comparison.

Prints one line per case: `torch NAME MEDIAN_SECONDS`. Run by `contract_bench --torch PYTHON`
or by hand: `python contract_bench_torch.py [THREADS] [REPS]`.
"""

import statistics
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
torch.set_num_threads(threads)
torch.manual_seed(0)


def median_time(f, reps):
    f()  # warm-up (and oneDNN primitive creation)
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def report(name, f, reps=reps):
    print(f"torch {name} {median_time(f, reps):.6e}", flush=True)


with torch.no_grad():
    a = torch.randn(512, 512)
    b = torch.randn(512, 512)
    report("matmul_512", lambda: torch.mm(a, b))

    def conv_cases(name, x_shape, w_shape, padding, conv, conv_input, conv_weight, reps):
        x = torch.randn(*x_shape)
        w = torch.randn(*w_shape)
        y = conv(x, w, padding=padding)
        dy = torch.randn_like(y)
        report(f"{name}_fwd", lambda: conv(x, w, padding=padding), reps)
        report(
            f"{name}_dx",
            lambda: conv_input(x.shape, w, dy, padding=padding),
            reps,
        )
        report(
            f"{name}_dw",
            lambda: conv_weight(x, w.shape, dy, padding=padding),
            reps,
        )

    g = torch.nn.grad
    conv_cases(
        "lenet",
        (64, 1, 32, 32),
        (6, 1, 3, 3),
        0,
        torch.nn.functional.conv2d,
        g.conv2d_input,
        g.conv2d_weight,
        reps,
    )
    conv_cases(
        "unet3d",
        (1, 32, 32, 32, 32),
        (32, 32, 3, 3, 3),
        1,
        torch.nn.functional.conv3d,
        g.conv3d_input,
        g.conv3d_weight,
        max(3, reps // 2),
    )
