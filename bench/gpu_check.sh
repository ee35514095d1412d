#!/usr/bin/env bash
# Prepared GPU check for SAM2CT (under 8 minutes on one H100): 100 training steps on synthetic
# data, then inference on a LUNG1 series; prints slices/s and peak GPU memory.
#   usage: bench/gpu_check.sh LUNG1_CASE_DIR [--steps N] [--device D] [--image-size PX] ...
#   e.g.   bench/gpu_check.sh data/lung1/LUNG1-001            (on the GPU machine; bench/gpu_bundle.sh
#          packs what to carry there)
#          bench/gpu_check.sh /work/shared/data/lung1/LUNG1-001 --steps 2 --device cpu --image-size 64
# Installs nothing: torch, sam2 (+hydra-core, omegaconf, iopath), numpy, scipy, scikit-image and
# pydicom must be importable (e.g. PYTHONPATH pointing at carried packages).
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 LUNG1_CASE_DIR [gpu_check.py options]" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
"$PY" - <<'PYEOF'
import importlib, sys
missing = [m for m in ("torch", "sam2", "hydra", "omegaconf", "numpy", "scipy", "skimage",
                       "pydicom") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages: {', '.join(missing)}")
PYEOF
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec timeout 470 "$PY" bench/gpu_check.py --lung1 "$1" "${@:2}"
