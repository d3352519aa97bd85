"""Stop strings for a hand-written decode loop: the decoded tail of a row is checked only after a token that can
complete a stop string.

A stop string may straddle tokens (``</search>`` split as ``</`` + ``search>``), so the check decodes the last few
tokens of a row and looks for the string in that text. Decoding every row's tail at every step is a tokenizer
call per row per step (~1 % of a rollout of the 0.9M-parameter benchmark policy); but a stop string that newly
appears in the tail ends with a character the newest token added, so only tokens whose own text can carry that last
character need the check (:func:`stop_candidates`):

* its decoded text contains the last character of some stop string (``>`` for ``</search>``);
* or it decodes to ``\\ufffd`` (part of a multi-byte character: in context it may complete any character);
* or it decodes to nothing (a decoder that rewrites text at the edges, e.g. a lone Metaspace ``▁``).

Decoders that merge whitespace make the rule unsafe for stop strings ending in whitespace: for those every token
is checked. :class:`StopChecker` applies the rule and returns exactly what checking every row would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def stop_candidates(tokenizer: Any, stops: Sequence[str], vocab_size: int) -> torch.Tensor | None:
    """Bool [V]: the token ids after which ``stops`` must be looked for (see the module docstring); None when
    every token must be (a stop string ends in whitespace). Ids the tokenizer cannot decode are candidates."""
    lasts = {s[-1] for s in stops if s}
    if not lasts or any(c.isspace() for c in lasts):
        return None
    n = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(n)])  # each token by itself
    can = [text == "" or "\ufffd" in text or any(c in text for c in lasts) for text in texts]
    return torch.tensor(can + [True] * (vocab_size - n), dtype=torch.bool)  # [V]


class StopChecker:
    """Finds the stop string (if any) that each row's newest token completed, in a row's last ``window`` tokens."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.window = max((len(s.encode()) for s in self.stops), default=0) + 1  # tokens covering any stop string
        self.candidates = stop_candidates(tokenizer, self.stops, vocab_size) if self.stops else None

    def check(self, gens: Sequence[Sequence[int]], tok: torch.Tensor) -> list[str | None]:
        """``gens[r]``: row r's tokens so far, ``tok`` [B] each row's newest token (not yet in ``gens``)."""
        out: list[str | None] = [None] * len(gens)
        if not self.stops:
            return out
        if self.candidates is None:
            rows = list(range(len(gens)))
        else:
            rows = torch.nonzero(self.candidates[tok.cpu()]).flatten().tolist()  # one vectorised lookup
        if not rows:
            return out
        toks = tok.tolist()
        tails = [list(gens[r][-(self.window - 1):]) + [toks[r]] for r in rows]
        for r, text in zip(rows, self.tokenizer.batch_decode(tails), strict=True):
            out[r] = next((s for s in self.stops if s in text), None)
        return out
