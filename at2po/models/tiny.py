"""A tiny, fast, fully real HF model for tests and benchmarks: byte-level BPE tokenizer + small random Llama.

``build_tiny_model`` trains a byte-level BPE tokenizer (``tokenizers``) on the given texts, wraps it as a
``PreTrainedTokenizerFast`` with a ChatML chat template and the specials ``<|endoftext|>`` (bos/unk),
``<|im_start|>``, ``<|im_end|>`` (eos, end of turn) and ``<pad>``, and saves it next to a randomly initialised
``LlamaForCausalLM``. The directory then loads with ``AutoTokenizer/AutoModelForCausalLM.from_pretrained`` like
any hub model, so every code path (chat template, special tokens, generation) is exercised for real.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, IM_START, IM_END, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, IM_START, IM_END, PAD)

# ChatML, as SmolLM2-Instruct uses it (no default system prompt).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DEFAULT_ARCH: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style byte alphabet, so every string is encodable)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=IM_END,
        unk_token=BOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    texts: list[str], out_dir: str | Path, vocab_size: int = 1024, seed: int = 0, **arch: Any
) -> Path:
    """Train the tokenizer on ``texts``, build a random ``LlamaForCausalLM`` and ``save_pretrained`` both.

    ``arch`` overrides fields of :data:`DEFAULT_ARCH` (hidden_size, num_hidden_layers, ...).
    Returns ``out_dir``.
    """
    if not texts:
        raise ValueError("build_tiny_model: texts is empty; the tokenizer needs some training text")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    unknown = set(arch) - set(LlamaConfig().to_dict())
    if unknown:
        raise ValueError(f"build_tiny_model: unknown LlamaConfig field(s) {sorted(unknown)}")
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**DEFAULT_ARCH, **arch},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
