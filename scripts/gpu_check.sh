#!/bin/bash
# The GPU proof in one call (alpaca_helpers/train/gpu_check.py): a 1B-class full fine-tune through FSDP in
# bf16 (tokens/s, MFU, peak memory against the plan), LoRA on a 7B-shaped model (peak memory against the plan),
# checkpoints, a stop, a resume and the final save, notebook 04 under papermill with gpus=1, and 2 processes
# where 2 GPUs exist. Random-weight models from LLaMA-7B's config resized, with the real LLaMA-1/2 tokenizer
# (shipped in data/tokenizers): nothing is downloaded. Writes gpu_check.json and gpu_check.md into --out
# (default runs/gpu_check). Its first step imports every package the checks need and names, in one line,
# any that is missing (exit 2), before a model is built.
#
#   scripts/gpu_check.sh                  # on the GPU machine
#   scripts/gpu_check.sh --cpu            # tiny shapes on CPU (what CI runs)
#
# A bare machine (PyTorch, transformers, accelerate, peft; no datasets, gguf, papermill or Jupyter, no network):
# carry the wheels of scripts/gpu_check_requirements.txt in .whl/ (scripts/gpu_check_wheels.sh downloads them
# where PyPI is reachable); they are installed into a private folder here when one of those is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import datasets, gguf, papermill, ipykernel" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: datasets, gguf, papermill or ipykernel is missing and no wheels are in .whl/ (scripts/gpu_check_wheels.sh downloads them)" >&2
    exit 2
  fi
  SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" -m alpaca_helpers.train.gpu_check "$@"
