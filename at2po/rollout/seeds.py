"""Every random stream of a run, derived in one place from the config's seeds (``rollout.seed``, ``train.seed``)
and the position of what it drives — never from batching, timing or the order of work — so a resumed run, another
batching mode or another tree schedule draws the same numbers.

* :func:`derive_seed` — the 32-bit mixer all other seeds are built from;
* :func:`rollout_seed` — the rollout seed of RL step ``step`` on process ``rank``;
* :func:`tree_seed` / :func:`turn_seed` — a tree's stream, and a turn's from its parent's (its place in the tree);
* :func:`update_rng` — the generator of the PPO update's prompt shuffles (step, rank);
* process-wide torch/numpy/random seeding is accelerate's ``set_seed`` (``train.seed``; ``+ rank`` after the
  identical model initialisation).
"""

from __future__ import annotations

import numpy as np
import torch

from at2po.rollout.sampling import _M32, hash32


def derive_seed(base: int, index: int) -> int:
    """32-bit seed of stream ``index`` under base seed ``base`` (two rounds of the lowbias32 hash)."""
    t = torch.tensor([(base * 0x9E3779B1 + index * 0x85EBCA6B + 0x27D4EB2F) & _M32], dtype=torch.int64)
    return int(hash32(hash32(t) ^ (base & _M32))[0])


def rollout_seed(seed: int, step: int, rank: int) -> int:
    """The rollout seed of RL step ``step`` on process ``rank`` (``seed`` = ``rollout.seed``), in [0, 2³¹ − 1)."""
    return int(seed + 1_000_003 * step + 7_919 * 97 * rank) % (2**31 - 1)


def tree_seed(seed: int, tree: int) -> int:
    """The stream of tree (prompt) ``tree`` of a rollout with seed ``seed``."""
    return derive_seed(seed, tree)


def turn_seed(parent_seed: int, kind: int, round: int = 0, j: int = 0) -> int:
    """The random stream of a turn, derived from its position in the tree, never from batching or timing:
    ``kind`` 0 with j = the chain's index for the initial chains (parent: the tree's seed) and j = 0 for the turn
    after a tool call (parent: the calling turn's seed); ``kind`` 1 for the j-th fork of a node in round r
    (parent: the forked node's seed, or the tree's for the root). So every batching mode and tree schedule
    builds the same trees."""
    return derive_seed(derive_seed(derive_seed(parent_seed, kind), round), j)


def update_rng(seed: int, step: int, rank: int) -> np.random.Generator:
    """The generator of step ``step``'s PPO mini-batch shuffles on process ``rank`` (``seed`` = ``train.seed``)."""
    return np.random.default_rng([seed, step, rank])


__all__ = ["derive_seed", "rollout_seed", "tree_seed", "turn_seed", "update_rng"]
