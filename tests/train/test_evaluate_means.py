"""Evaluation means: a metric a sample (or a question) did not report is left out of its mean, not counted as 0."""

from __future__ import annotations

import math

import numpy as np

from at2po.core.tree import TurnTree
from at2po.train.evaluate import _records, summarize


class _Env:
    def describe(self, ex):
        return str(ex)


def _tree(ex: str, metrics: list[dict]) -> TurnTree:
    t = TurnTree.from_arrays(np.array([-1, 0, 0]), np.zeros(3), np.array([np.nan, 1.0, 0.0]))
    t.meta["example"] = ex
    for i, m in zip(t.leaves(), metrics, strict=True):
        t.nodes[i].info["metrics"] = m
    return t


def test_absent_metrics_are_left_out_of_means() -> None:
    recs = _records([_tree("a", [{"hits": 1.0}, {}]), _tree("b", [{}, {}])], _Env())
    assert recs[0]["hits"] == 1.0 and "hits" not in recs[1]  # one sample reported it; question b: none did
    overall = summarize(recs, n=2)["overall"]
    assert overall["hits"] == 1.0 and overall["reward"] == 0.5 and overall["count"] == 2.0
    assert math.isfinite(overall["pass@2"])
