"""The search-agent tag protocol (paper Fig. 6): <think>, <search>, <result>, <answer> with \\boxed{}.

This module holds the constants and the *formatting* side (what a well-formed turn and observation look like);
the parser and the prompt builder live beside it. The synthetic world's scripted expert writes its
demonstrations with exactly these functions, so SFT data and RL rollouts share one format.
"""

from __future__ import annotations

from collections.abc import Sequence

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TURN_STOP_STRINGS: tuple[str, ...] = (SEARCH_CLOSE,)  # a turn also stops at end of sequence

INSTRUCTION = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you "
    "get new information. After reasoning, if you find you lack some knowledge, you can call a search engine "
    "by <search> query </search>, and it will return the top searched results between <result> and </result>. "
    "You can search as many times as you want. If you find no further external knowledge needed, you can "
    "directly provide the answer inside <answer> and </answer>, with the final answer in \\boxed{}, "
    "for example <answer> The answer is \\boxed{Beijing} </answer>."
)


def format_search_turn(think: str, query: str) -> str:
    """A tool-call turn: reasoning, then one search call (generation stops at </search>)."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}\n{SEARCH_OPEN}{query}{SEARCH_CLOSE}"


def format_answer_turn(think: str, answer: str) -> str:
    """A final turn: reasoning, then the answer in \\boxed{} inside <answer> (the caller appends eos)."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}\n{ANSWER_OPEN}The answer is \\boxed{{{answer}}}{ANSWER_CLOSE}"


def format_passages(passages: Sequence[tuple[str, str]]) -> str:
    """Search-R1 style passage list from (title, text) pairs."""
    return "".join(f"Doc {i}(Title: {title}) {text}\n" for i, (title, text) in enumerate(passages, 1))


def format_observation(body: str) -> str:
    """Wrap an observation body in <result> tags, as inserted after a </search>."""
    return f"\n\n{RESULT_OPEN}\n{body.strip()}\n{RESULT_CLOSE}\n\n"
