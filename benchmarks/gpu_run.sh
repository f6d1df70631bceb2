#!/usr/bin/env bash
# A GPU machine's whole visit in one script, for a machine that has torch (CUDA) but reaches no package
# index: onnxruntime-gpu's wheel (1.31.1, CUDA 13; ~250 MB) travels split in five parts
# (`split -n 5 -d -a 1 WHEEL part.`, with files WHEEL = its name and SHA256 = `sha256sum` of it) that are
# copied to /tmp/ortgpu-parts first. This script reassembles and checks it, installs it beside normonnx,
# then runs the checks, each bounded by `timeout`, logs and results packed into $OUT/gpu-results.tgz
# after every step, so a run cut short still brings back what it made. Knobs (environment): CHECKS_S,
# BENCH_S (step time limits), PYTEST_K, VALIDATE (extra gpu_check.py arguments), BENCH_CASES, SCALE,
# MIN_TIME. Rehearse it on a CPU machine with DRY=1 (no parts, no CUDA: everything on ORT CPU).
set -u
OUT=${OUT:-/tmp/gpu-out}
work=/tmp/gpu-work; mkdir -p "$OUT" "$work"
log() { echo "[$(date +%T)] $*" | tee -a "$work/steps.log"; }
pack() { tar czf "$OUT/gpu-results.tgz" -C "$work" . 2>/dev/null; cp "$work/steps.log" "$OUT/" 2>/dev/null; }
parts=/tmp/ortgpu-parts
if [ -z "${DRY:-}" ]; then
  W=/tmp/$(cat $parts/WHEEL)
  cat $parts/part.0 $parts/part.1 $parts/part.2 $parts/part.3 $parts/part.4 > "$W" &&
    (cd /tmp && sha256sum -c ortgpu-parts/SHA256) &&
    python3 -m pip install -q --no-index --no-deps --target /tmp/ortgpu "$W" || { log "wheel install failed"; pack; exit 3; }
  export PYTHONPATH=/tmp/ortgpu
  [ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site:$PYTHONPATH
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || { log "normonnx install failed"; pack; exit 3; }
  runtimes=cuda,torch-cuda,cpu; dry=""
else
  runtimes=cpu; dry=--dry-run
fi
export PYTHONUNBUFFERED=1
log "installed"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; lscpu | grep -E "Model name|^CPU\(s\)";
  python3 -c "import torch, onnx, onnxruntime as o, numpy; o.preload_dlls() if hasattr(o, 'preload_dlls') else None
print('torch', torch.__version__, torch.version.cuda, 'onnx', onnx.__version__, 'ort', o.__version__, o.get_available_providers(), 'numpy', numpy.__version__)";
  python3 -m normonnx.presentation.cli list; } > "$work/env.txt" 2>&1
log "env: $(head -c 600 "$work/env.txt" | tr "\n" " ")"; pack
# the correctness checks in parallel (16 cores; the GPU is barely loaded), then the timings alone
# VALIDATE: extra arguments for the validate step (e.g. --kinds gn --variants contrib,native)
T=${CHECKS_S:-200}
timeout $T python3 -m pytest tests -q -k "${PYTEST_K:-cuda}" -p no:cacheprovider -rs > "$work/pytest-cuda.log" 2>&1 &
timeout $T python3 benchmarks/gpu_check.py $dry --only validate --runtimes $runtimes ${VALIDATE:-} --out "$work" > "$work/validate.log" 2>&1 &
timeout $T python3 benchmarks/gpu_check.py $dry --only models --out "$work" > "$work/models.log" 2>&1 &
wait
log "checks done: pytest $(tail -n 1 "$work/pytest-cuda.log")"; pack
timeout ${BENCH_S:-150} python3 benchmarks/gpu_check.py $dry --only bench --scale ${SCALE:-4} --min-time ${MIN_TIME:-0.5} \
  ${BENCH_CASES:+--bench-cases $BENCH_CASES} --out "$work" > "$work/bench.log" 2>&1
log "bench exit $?"; pack
