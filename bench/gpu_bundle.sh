#!/usr/bin/env bash
# Bundle what bench/gpu_check.sh needs on a GPU machine that has torch but nothing else of ours
# and no network: the pure-Python packages (with their dist-info: pydicom reads its own version
# from it), a LUNG1 case and the packed synthetic sets for --learn.
#   usage: bench/gpu_bundle.sh [OUT_DIR=.whl] [LUNG1_CASE_DIR=../shared/data/lung1/LUNG1-001]
# then, on the GPU machine (OUT_DIR carried along):
#   tar -C /tmp -xzf .whl/lung1.tgz
#   PYTHON=python3 PYTHONPATH=$PWD/.whl/site bash bench/gpu_check.sh /tmp/LUNG1-001 --variants
#   PYTHON=python3 PYTHONPATH=$PWD/.whl/site bash bench/gpu_check.sh /tmp/LUNG1-001 \
#       --skip-check --learn .whl/learn.npz
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.whl}
CASE=${2:-../shared/data/lung1/LUNG1-001}
PY=.venv/bin/python
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf "$OUT/site" && mkdir -p "$OUT/site"
for pkg in sam2 hydra omegaconf antlr4 iopath pydicom; do
    cp -r "$SITE/$pkg" "$OUT/site/"
done
for meta in sam2 hydra_core omegaconf iopath antlr4_python3_runtime pydicom; do
    cp -r "$SITE"/"$meta"-*.dist-info "$OUT/site/"
done
find "$OUT/site" -name __pycache__ -type d -prune -exec rm -rf {} +
rm -rf "$OUT/site/pydicom/data/test_files"  # 4 MB of pydicom's own test data
tar -C "$(dirname "$CASE")" -czf "$OUT/lung1.tgz" "$(basename "$CASE")"
"$PY" bench/bench_sam2ct_learning.py --train-studies 16 --heldout-studies 4 --pack "$OUT/learn.npz"
du -sh "$OUT"
