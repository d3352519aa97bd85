"""Rewards and evaluation metrics of the search agent (paper §4 / Search-R1 / FlashRAG conventions).

* ``normalize_answer``: SQuAD normalisation (lower-case, drop punctuation and the articles a/an/the, collapse
  whitespace), made unicode-aware: NFKC first (so composed/decomposed accents and full-width forms compare
  equal), ``casefold`` instead of ``lower``, and every unicode punctuation character (category P*) is dropped
  along with ASCII ``string.punctuation``. Accents themselves are kept: "Zürich" != "Zurich".
* ``exact_match`` / ``f1_score``: max over the gold answers (FlashRAG's token F1, yes/no/noanswer special case).
* ``extract_answer``: the ``\\boxed{}`` content inside the last ``<answer>`` block (nested braces allowed).
* ``compute_score``: the paper's training reward, −1 on format failure else EM.
* ``qa_metrics``: evaluation metrics (EM/F1 do not require the format).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

from at2po.agent.protocol import find_boxed, strip_results

_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b", flags=re.UNICODE)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", flags=re.DOTALL)
_THINK_RE = re.compile(r"<think>.*?</think>", flags=re.DOTALL)
_SEARCH_RE = re.compile(r"<search>.*?</search>", flags=re.DOTALL)


def _is_punct(c: str) -> bool:
    return c in _ASCII_PUNCT or unicodedata.category(c).startswith("P")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: NFKC, casefold, remove punctuation, remove articles, collapse whitespace.

    Punctuation is deleted (not replaced by a space), as in SQuAD: "U.S." -> "us".
    """
    s = unicodedata.normalize("NFKC", s).casefold()
    s = "".join(c for c in s if not _is_punct(c))
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def _golds(golden_answers: str | Sequence[str]) -> list[str]:
    if isinstance(golden_answers, str):
        return [golden_answers]
    return [str(g) for g in golden_answers]


def exact_match(prediction: str | None, golden_answers: str | Sequence[str]) -> float:
    """EM = max_g 1[normalize(prediction) == normalize(g)]; 0.0 for a missing prediction."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golden_answers)))


def _token_f1(pred: str, gold: str) -> float:
    # FlashRAG/HotpotQA convention: yes/no/noanswer must match exactly, no partial credit.
    if (pred in ("yes", "no", "noanswer") or gold in ("yes", "no", "noanswer")) and pred != gold:
        return 0.0
    p, g = pred.split(), gold.split()
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, golden_answers: str | Sequence[str]) -> float:
    """Token F1 = max_g 2PR/(P+R) over normalised whitespace tokens (P = |common|/|pred|, R = |common|/|gold|)."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return max((_token_f1(pred, normalize_answer(g)) for g in _golds(golden_answers)), default=0.0)


def _last_answer_block(text: str) -> str | None:
    blocks = _ANSWER_RE.findall(strip_results(text))
    return blocks[-1] if blocks else None


def extract_answer(text: str) -> str | None:
    """The ``\\boxed{}`` content inside the last ``<answer>...</answer>`` the policy wrote (observations in
    ``<result>`` blocks are ignored); None when there is no answer block or no balanced ``\\boxed{}`` in it."""
    block = _last_answer_block(text)
    return None if block is None else find_boxed(block)


def is_valid_format(response_text: str) -> bool:
    """The paper's format check: the policy's text has a ``<think>...</think>`` and ends its reasoning with an
    ``<answer>...</answer>`` holding a balanced ``\\boxed{}``."""
    own = strip_results(response_text)
    return bool(_THINK_RE.search(own)) and extract_answer(response_text) is not None


def compute_score(response_text: str, golden_answers: str | Sequence[str]) -> float:
    """Paper training reward: r = −1 if the format check fails, else EM(boxed answer, golds) ∈ {0, 1}."""
    if not is_valid_format(response_text):
        return -1.0
    return exact_match(extract_answer(response_text), golden_answers)


def prediction_for_eval(response_text: str) -> str | None:
    """The answer scored at evaluation, where format is not required: the boxed answer if present, else the raw
    content of the last ``<answer>`` block, else None."""
    boxed = extract_answer(response_text)
    if boxed is not None:
        return boxed
    block = _last_answer_block(response_text)
    return None if block is None else block.strip()


def count_tool_calls(response_text: str) -> int:
    """Number of ``<search>...</search>`` calls the policy wrote (corrective observations are not counted)."""
    return len(_SEARCH_RE.findall(strip_results(response_text)))


def qa_metrics(response_text: str, golden_answers: str | Sequence[str]) -> dict[str, float]:
    """Evaluation metrics of one finished trajectory: ``em``, ``f1`` (format not required), ``format_ok``,
    ``answered`` (an ``<answer>`` block exists), ``tool_calls``, ``reward`` (= ``compute_score``)."""
    pred = prediction_for_eval(response_text)
    fmt = is_valid_format(response_text)
    em = exact_match(pred, golden_answers)
    return {
        "em": em,
        "f1": f1_score(pred, golden_answers),
        "format_ok": float(fmt),
        "answered": float(pred is not None),
        "tool_calls": float(count_tool_calls(response_text)),
        "reward": em if fmt else -1.0,
    }
