#!/usr/bin/env bash
# Builds, on a machine with a Rust toolchain (a GPU is not needed), the bundle that
# scripts/gpu-check.sh runs on a GPU machine without Rust or network:
#
#     bash scripts/gpu-build.sh            # -> target/gpu-check/
#     # on the GPU machine, from the repository root (the bundle travels with the tree):
#     bash scripts/gpu-check.sh            # reads target/gpu-check/
#
# The bundle: the release test binaries of tests/{cuda,torch_parity,nn,optim,compile,api}.rs
# and the `kiln` binary, built with `--features cuda` against the stub libcuda
# (scripts/cuda-stub.sh; the binaries load the machine's real libcuda.so.1 at run time),
# stripped of debug info (symbols are kept, for backtraces) and gzipped (gpu-check.sh unpacks
# them); the PyTorch fixtures
# (../shared/fixtures/torch, or $KILN_FIXTURES); the torch side of the benchmarks
# (bench/torch). It must stay under 64 MiB (the limit on what travels to the GPU
# machine); the script checks.
#
# Environment: KILN_GPU_BUNDLE (default target/gpu-check), KILN_FIXTURES.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "gpu-build.sh: $*" >&2
    exit 1
}

out="${KILN_GPU_BUNDLE:-target/gpu-check}"
fixtures="${KILN_FIXTURES:-../shared/fixtures/torch}"
[[ -d "$fixtures" ]] || die "no fixture directory $fixtures (set KILN_FIXTURES)"
tests=(cuda torch_parity nn optim compile api)

eval "$(bash scripts/cuda-stub.sh)"

# The executables cargo reports for the test targets and the `kiln` binary.
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
cargo test --release --features cuda --no-run --message-format=json "${args[@]}" >"$json"
cargo build --release --features cuda --bin kiln --message-format=json >>"$json"

rm -rf "$out"
mkdir -p "$out/bin" "$out/fixtures/torch" "$out/bench"
exe_of() { # target name, kind (test|bin) -> path of its executable
    jq -r --arg n "$1" --arg k "$2" \
        'select(.reason == "compiler-artifact" and .target.name == $n and (.target.kind | index($k)) and .executable != null) | .executable' \
        "$json" | tail -n 1
}
pack() { # executable, name -> $out/bin/name.gz
    strip --strip-debug -o "$out/bin/$2" "$1"
    gzip -6 -n "$out/bin/$2"
}
for t in "${tests[@]}"; do
    exe="$(exe_of "$t" test)"
    [[ -x "$exe" ]] || die "no executable for test $t"
    pack "$exe" "$t"
done
exe="$(exe_of kiln bin)"
[[ -x "$exe" ]] || die "no executable for the kiln binary"
pack "$exe" kiln

cp "$fixtures"/*.safetensors "$out/fixtures/torch/"
cp -r bench/torch "$out/bench/"
find "$out/bench" -name __pycache__ -prune -exec rm -rf {} +
{
    echo "built $(date -u +%FT%TZ) on $(hostname) from $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "tests: ${tests[*]}; binary: kiln; features: cuda"
    rustc --version
} >"$out/BUILD"

bytes="$(du -sb "$out" | cut -f1)"
limit=$((60 << 20))
echo "gpu-build.sh: $out: $((bytes >> 20)) MiB" >&2
du -sh "$out"/bin/* "$out/fixtures" "$out/bench" >&2
[[ "$bytes" -lt "$limit" ]] || die "the bundle is $((bytes >> 20)) MiB, over the 60 MiB budget"
# Refuse to ship binaries that would pick up the stub: no RPATH may point at it.
for b in "$out"/bin/*.gz; do
    if gzip -dc "$b" >"$json.elf" && readelf -d "$json.elf" | grep -E 'RPATH|RUNPATH' | grep -q cuda-stub; then
        die "$b has the stub's directory in its RPATH"
    fi
done
rm -f "$json.elf"
echo "gpu-build.sh: done; on the GPU machine run: bash scripts/gpu-check.sh $out" >&2
