"""Turn trees: one per prompt. Root = the prompt (no generated tokens); every other node = one turn.

A node holds the observation tokens that preceded its turn (masked from the loss), the tokens the policy
generated in the turn, their sampling log-probs, and how the turn ended. A node whose turn ended with a tool
call has the next turn as its child; a node with no children is a leaf and carries the trajectory reward.
Every root-to-leaf path is one trajectory.

Array form (what the credit and expansion kernels take): ``parent`` (int64, -1 for the root, nodes in
topological order: parent index < node index), ``entropy`` (float64, H(n); 0 for the root), ``reward``
(float64, NaN for internal nodes), ``is_leaf`` (bool).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class TurnEnd(str, Enum):
    """How a turn ended."""

    NONE = "none"  # the root, or a turn not generated yet
    TOOL_CALL = "tool_call"  # a (possibly malformed) tool call: an observation follows, the trajectory continues
    ANSWER = "answer"  # a final answer (or end of sequence without a tool call)
    TRUNCATED = "truncated"  # cut off: max response / model length / max turns
    ERROR = "error"  # ended by the environment (e.g. tool-call limit reached with mode "end")


@dataclass
class TurnNode:
    """One turn. ``obs_ids`` precede ``gen_ids`` in the context; only ``gen_ids`` are trained on."""

    parent: int
    obs_ids: list[int] = field(default_factory=list)
    gen_ids: list[int] = field(default_factory=list)
    gen_logprobs: list[float] = field(default_factory=list)
    end: TurnEnd = TurnEnd.NONE
    reward: float = math.nan
    children: list[int] = field(default_factory=list)
    group: int = 0  # Tree-GRPO: which of the prompt's trees the node belongs to (inherited when forked)
    text: str = ""  # decoded generated text of the turn (for parsing and display; training uses ids)
    obs_text: str = ""
    tool_call: str | None = None  # the query, when the turn called the search tool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def entropy(self) -> float:
        """H(n) = (1/|y_n|) Σ_t −log π(y_t | ·): Monte-Carlo entropy of the turn from its sampled tokens."""
        if not self.gen_logprobs:
            return 0.0
        return -float(sum(self.gen_logprobs)) / len(self.gen_logprobs)


@dataclass
class TreeArrays:
    """Plain array form of one tree (or of several concatenated, see :func:`stack_trees`)."""

    parent: np.ndarray  # [N] int64, -1 for roots
    entropy: np.ndarray  # [N] float64
    reward: np.ndarray  # [N] float64, NaN on internal nodes
    is_leaf: np.ndarray  # [N] bool
    # [N] int64 TurnNode.group (Tree-GRPO tree membership within a prompt); None when not known.
    # Additive field (default None) so existing 4-argument constructions keep working.
    group: np.ndarray | None = None


@dataclass
class TurnTree:
    """All turns of one prompt. ``nodes[0]`` is the root; nodes are appended, so indices are topological."""

    prompt_ids: list[int]
    nodes: list[TurnNode] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. the QA example (question, golden answers, source)

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes.append(TurnNode(parent=-1))

    # --- construction -------------------------------------------------------------------------------
    def add_node(self, parent: int, **fields: Any) -> int:
        """Append a child of ``parent``; returns its index."""
        if not 0 <= parent < len(self.nodes):
            raise IndexError(f"parent {parent} out of range for a tree of {len(self.nodes)} nodes")
        idx = len(self.nodes)
        fields.setdefault("group", self.nodes[parent].group if parent != 0 else 0)
        self.nodes.append(TurnNode(parent=parent, **fields))
        self.nodes[parent].children.append(idx)
        return idx

    # --- derived ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def root(self) -> TurnNode:
        return self.nodes[0]

    def is_leaf(self, i: int) -> bool:
        return i != 0 and not self.nodes[i].children

    def leaves(self) -> list[int]:
        return [i for i in range(1, len(self.nodes)) if not self.nodes[i].children]

    def depth(self, i: int) -> int:
        """Number of turns from the root to node i (root: 0)."""
        d = 0
        while i > 0:
            i = self.nodes[i].parent
            d += 1
        return d

    def path(self, i: int) -> list[int]:
        """Node indices root-excluded from the first turn down to node i."""
        out: list[int] = []
        while i > 0:
            out.append(i)
            i = self.nodes[i].parent
        return out[::-1]

    def trajectories(self) -> list[list[int]]:
        """One root-to-leaf path (root excluded) per leaf, in leaf order."""
        return [self.path(leaf) for leaf in self.leaves()]

    def context_ids(self, i: int, include_gen: bool = False) -> list[int]:
        """The state of node i: prompt + (obs + gen) of every ancestor + obs of i (+ gen of i if asked).

        Forking node i means sampling a fresh turn from exactly this context (spec, Component 1).
        """
        ids = list(self.prompt_ids)
        for j in self.path(i):
            ids.extend(self.nodes[j].obs_ids)
            if j != i or include_gen:
                ids.extend(self.nodes[j].gen_ids)
        return ids

    def num_tool_calls(self, i: int) -> int:
        """Tool calls made on the path root → i (inclusive)."""
        return sum(1 for j in self.path(i) if self.nodes[j].end == TurnEnd.TOOL_CALL)

    def to_arrays(self) -> TreeArrays:
        n = len(self.nodes)
        parent = np.fromiter((nd.parent for nd in self.nodes), dtype=np.int64, count=n)
        entropy = np.fromiter((nd.entropy for nd in self.nodes), dtype=np.float64, count=n)
        entropy[0] = 0.0
        is_leaf = np.fromiter((self.is_leaf(i) for i in range(n)), dtype=bool, count=n)
        reward = np.full(n, np.nan)
        reward[is_leaf] = [self.nodes[i].reward for i in np.flatnonzero(is_leaf)]
        group = np.fromiter((nd.group for nd in self.nodes), dtype=np.int64, count=n)
        return TreeArrays(parent=parent, entropy=entropy, reward=reward, is_leaf=is_leaf, group=group)

    @classmethod
    def from_arrays(
        cls, parent: np.ndarray, entropy: np.ndarray | None = None, reward: np.ndarray | None = None
    ) -> TurnTree:
        """Build a token-free tree from the array form (for tests and kernels).

        Entropies are stored as a one-token turn with log-prob −H so that ``node.entropy`` round-trips.
        """
        parent = np.asarray(parent, dtype=np.int64)
        validate_parent(parent)
        tree = cls(prompt_ids=[])
        for i in range(1, len(parent)):
            h = float(entropy[i]) if entropy is not None else 0.0
            tree.add_node(int(parent[i]), gen_logprobs=[-h])
            if reward is not None and not math.isnan(float(reward[i])):
                tree.nodes[i].reward = float(reward[i])
        return tree


def validate_parent(parent: np.ndarray) -> None:
    """Raise ValueError unless ``parent`` is a single tree in topological order rooted at node 0."""
    parent = np.asarray(parent)
    if parent.ndim != 1 or len(parent) == 0:
        raise ValueError("parent must be a non-empty 1-D array")
    if parent[0] != -1:
        raise ValueError(f"parent[0] must be -1 (the root), got {parent[0]}")
    idx = np.arange(len(parent))
    bad = (parent[1:] < 0) | (parent[1:] >= idx[1:])
    if bad.any():
        j = int(np.flatnonzero(bad)[0]) + 1
        raise ValueError(f"node {j} has parent {parent[j]}: nodes must be in topological order (0 <= parent < index)")


def stack_trees(trees: list[TurnTree]) -> tuple[TreeArrays, np.ndarray, np.ndarray]:
    """Concatenate several trees' arrays for one vectorised kernel call.

    Returns (arrays with parent indices shifted to global positions, tree_index [N], offsets [n_trees + 1]).
    """
    arrs = [t.to_arrays() for t in trees]
    sizes = np.array([len(a.parent) for a in arrs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    parent = np.concatenate(
        [np.where(a.parent >= 0, a.parent + off, -1) for a, off in zip(arrs, offsets[:-1], strict=True)]
    )
    out = TreeArrays(
        parent=parent,
        entropy=np.concatenate([a.entropy for a in arrs]),
        reward=np.concatenate([a.reward for a in arrs]),
        is_leaf=np.concatenate([a.is_leaf for a in arrs]),
        group=(
            np.concatenate([a.group for a in arrs]) if all(a.group is not None for a in arrs) else None
        ),
    )
    return out, np.repeat(np.arange(len(trees)), sizes), offsets
