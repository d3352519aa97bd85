"""The search-agent prompt (paper Fig. 6) and the tokenizer-side helpers of a turn: prompt ids, stop tokens.

With a chat template the instruction + question is the user message and the whole multi-turn interaction
(turns and ``<result>`` observations) is the assistant's reply, as in Search-R1 and the reference code. Without
one, a plain ``Question: ... / Assistant:`` template is used (base models, the tiny test models).
"""

from __future__ import annotations

from typing import Any

from at2po.agent.protocol import INSTRUCTION

PLAIN_TEMPLATE = "{instruction}\nQuestion: {question}\nAssistant: "

# End-of-turn tokens of common chat formats (ChatML, Llama 3, Phi-3, Gemma); the ones in the vocabulary stop a turn.
END_OF_TURN_TOKENS: tuple[str, ...] = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def user_message(question: str) -> str:
    """The user message: the paper's instruction followed by the question."""
    return f"{INSTRUCTION} Question: {question.strip()}\n"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt_text(
    question: str,
    tokenizer: Any | None = None,
    *,
    use_chat_template: bool = True,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> str:
    """Prompt text: ``apply_chat_template([user], add_generation_prompt=True)`` when ``use_chat_template`` and the
    tokenizer has a template, else ``PLAIN_TEMPLATE``."""
    if use_chat_template and tokenizer is not None and has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message(question)}],
            tokenize=False,
            add_generation_prompt=True,
            **(chat_template_kwargs or {}),
        )
        return str(text)
    return PLAIN_TEMPLATE.format(instruction=INSTRUCTION, question=question.strip())


def build_prompt_ids(
    tokenizer: Any,
    question: str,
    *,
    use_chat_template: bool = True,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[int]:
    """Token ids of the prompt. A chat template already writes its own special tokens (bos, ``<|im_start|>``), so
    they are not added again; the plain template gets the tokenizer's usual specials (e.g. bos)."""
    chat = use_chat_template and has_chat_template(tokenizer)
    text = build_prompt_text(
        question, tokenizer, use_chat_template=use_chat_template, chat_template_kwargs=chat_template_kwargs
    )
    return list(tokenizer(text, add_special_tokens=not chat)["input_ids"])


def stop_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids that end a turn: the tokenizer's eos plus any chat end-of-turn token in its vocabulary, deduplicated."""
    ids: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.append(eos)
    elif isinstance(eos, (list, tuple)):
        ids.extend(int(i) for i in eos)
    vocab = tokenizer.get_vocab()
    ids.extend(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return tuple(dict.fromkeys(ids))
