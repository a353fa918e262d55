#!/usr/bin/env bash
# GPU check of the LLM side (issue: GPU readiness). On a machine with a CUDA GPU and ../shared/data/games:
#   bash bench/gpu_check.sh
# Uses $PYTHON if set, else .venv/bin/python; that environment needs a CUDA build of torch plus this package
# (pip install -r requirements.lock, then `pip install --force-reinstall torch==2.13.0` from the CUDA index).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
DEALREC_PROGRESS=0 PYTHONPATH=. timeout 540 "$PY" bench/gpu_check.py "$@"
