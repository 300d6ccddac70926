#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine (H100, sm_90, a CUDA 12/13 driver, PyTorch; no
# Rust toolchain, no network), from the bundle scripts/gpu-build.sh made:
#
#     bash scripts/gpu-check.sh [BUNDLE]        # default target/gpu-check
#
# 1. the machine: nvidia-smi, torch and its CUDA; refuses to run with kiln's stub libcuda on
#    the library path (it would shadow the driver);
# 2. tests/cuda.rs with KILN_BACKEND=cuda and KILN_REQUIRE_GPU=1: one LeNet and one 3-D U-Net
#    training step (forward, backward, SGD update) on the GPU against the CPU JIT, every
#    dtype across the bus, the GPU program cache and the caching allocator, and three LeNet
#    steps with the parameters resident on the GPU (CudaProgram::run_device);
# 3. the PyTorch parity suites on the GPU (KILN_BACKEND=cuda): tests/torch_parity.rs (every
#    single-op fixture), tests/nn.rs (LeNet and U-Net training steps against PyTorch, layers),
#    tests/optim.rs (optimisers, LeNet training); then tests/compile.rs (compiled steps) and
#    tests/api.rs (the tensor API) with every program on the GPU;
# 4. if time is left: `kiln bench` on the GPU (lenet-train at batch 64, unet3d-train at batch 1)
#    with --compare-torch (the torch side as bench/torch runs it);
# 5. a table of the results, last.
#
# Every step runs under `timeout`, and the whole script stays within KILN_GPU_CHECK_BUDGET
# seconds (default 480), so it finishes well inside a 10-minute slot. Logs go to
# $OUT/gpu-check (the device runner's output folder) if OUT is set, else BUNDLE/logs.
# Exit status: 0 if every check that ran passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

bundle="${1:-target/gpu-check}"
budget="${KILN_GPU_CHECK_BUDGET:-480}"
logs="${OUT:+$OUT/gpu-check}"
logs="${logs:-$bundle/logs}"
mkdir -p "$logs"
start=$(date +%s)
rows=()
failed=0

say() { echo "== $*"; }
left() { echo $((budget - ($(date +%s) - start))); }

# run NAME LIMIT_S CMD...: runs CMD under timeout (the smaller of LIMIT_S and the time left),
# logs it to $logs/NAME.log, shows its tail and records a row of the table.
run() {
    local name="$1" limit="$2"
    shift 2
    local t
    t=$(left)
    if ((t < 15)); then
        rows+=("$name|skipped|0|no time left in the ${budget}s budget")
        return
    fi
    ((limit > t)) && limit=$t
    say "$name (timeout ${limit}s): $*"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$logs/$name.log" 2>&1
    rc=$?
    local secs=$(($(date +%s) - t0))
    tail -n 25 "$logs/$name.log"
    local note
    note="$(grep -E '^test result:' "$logs/$name.log" | tail -n 1 | sed 's/^test result: //; s/; finished in.*//')"
    [[ -z "$note" ]] && note="$(grep -v '^\s*$' "$logs/$name.log" | tail -n 1 | cut -c1-90)"
    local status=pass
    if ((rc == 124 || rc == 137)); then
        status=TIMEOUT
        failed=1
    elif ((rc != 0)); then
        status="FAIL($rc)"
        failed=1
    fi
    rows+=("$name|$status|$secs|$note")
}

say "bundle $bundle"
cat "$bundle/BUILD" 2>/dev/null || {
    echo "no bundle at $bundle: run scripts/gpu-build.sh on a machine with Rust first" >&2
    exit 1
}
bundle="$(cd "$bundle" && pwd)"
# The binaries travel gzipped: unpack them into a temporary directory.
bin="$(mktemp -d "${TMPDIR:-/tmp}/kiln-gpu-check.XXXXXX")"
for z in "$bundle"/bin/*.gz; do
    n="$(basename "$z" .gz)"
    gzip -dc "$z" >"$bin/$n" && chmod +x "$bin/$n" || {
        echo "cannot unpack $z" >&2
        exit 1
    }
done

# 1. The machine.
say "nvidia-smi"
timeout 30 nvidia-smi || echo "(nvidia-smi failed: rc $?)"
timeout 30 nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>/dev/null
say "python / torch"
timeout 90 python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' ||
    echo "(torch not importable)"

# The stub must not shadow the driver.
unset KILN_CUDA_STUB CUDA_LIBRARY_PATH
if [[ "${LD_LIBRARY_PATH:-}" == *cuda-stub* ]]; then
    echo "LD_LIBRARY_PATH contains kiln's stub libcuda ($LD_LIBRARY_PATH): it would shadow the driver" >&2
    exit 1
fi
libcuda="$(ldd "$bin/cuda" | awk '/libcuda\.so/ {print $3}')"
echo "libcuda.so.1 resolves to: ${libcuda:-NOT FOUND}"
if [[ -z "$libcuda" || "$libcuda" == "not" ]]; then
    echo "the driver's libcuda.so.1 is not found by the dynamic linker" >&2
    exit 1
fi
if [[ "$libcuda" == *cuda-stub* ]] || grep -q -a "kiln's stub libcuda" "$libcuda" 2>/dev/null; then
    echo "$libcuda is kiln's stub, not the driver" >&2
    exit 1
fi
rows+=("driver|pass|0|libcuda: $libcuda")

export KILN_BACKEND=cuda KILN_FIXTURES="$bundle/fixtures/torch" RUST_BACKTRACE=1

# 2. GPU against CPU.
run gpu-vs-cpu 180 env KILN_REQUIRE_GPU=1 "$bin/cuda" --nocapture --test-threads 1
# 3. PyTorch parity on the GPU.
run torch_parity 120 "$bin/torch_parity" --nocapture
run nn 150 "$bin/nn"
run optim 120 "$bin/optim"
# The front end on the GPU: compiled steps (kiln::compile holds a CudaProgram) and the API.
run compile 90 "$bin/compile"
run api 90 "$bin/api"
# 4. Benchmarks, if time is left and this kiln has `kiln bench`.
if "$bin/kiln" bench --help >/dev/null 2>&1; then
    for wb in lenet-train:64 unet3d-train:1; do
        w="${wb%%:*}"
        run "bench-$w" 90 "$bin/kiln" bench "$w" --batch "${wb##*:}" --compare-torch \
            --python python3 --torch-dir "$bundle/bench/torch" --budget 0.5 --threads 8
    done
else
    rows+=("bench|skipped|0|this kiln binary has no \`bench\` subcommand")
fi

# 5. The table.
echo
say "summary ($(($(date +%s) - start)) s; logs in $logs)"
printf '%-20s %-10s %6s  %s\n' check result secs note
for r in "${rows[@]}"; do
    IFS='|' read -r name status secs note <<<"$r"
    printf '%-20s %-10s %6s  %s\n' "$name" "$status" "$secs" "$note"
done
exit "$failed"
