"""Flatten turn trees into training rows: one row per leaf (the root → leaf trajectory), token for token.

A row is the exact token sequence the model saw: prompt ids, then for every turn on the path its observation ids
(masked) and its sampled ids (trained on). Nothing is decoded and re-encoded, so a sampled token that does not
survive a text round trip is kept as sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

from at2po.core.tree import TurnTree


@dataclass
class Row:
    input_ids: list[int]
    response_mask: list[int]  # 1 on generated tokens
    turn_ids: list[int]  # turn index within the trajectory (0-based) for obs+gen tokens of that turn, -1 on prompt
    node_ids: list[int]  # tree node index of each token, -1 on prompt tokens
    logprobs: list[float]  # sampling log-prob on generated tokens, 0.0 elsewhere
    reward: float
    tree_index: int
    leaf: int
    prompt_len: int

    def __len__(self) -> int:
        return len(self.input_ids)


def flatten_tree(tree: TurnTree, tree_index: int = 0) -> list[Row]:
    """Rows of one tree, in leaf order (``tree.leaves()``)."""
    rows: list[Row] = []
    p = len(tree.prompt_ids)
    for leaf in tree.leaves():
        ids, mask, turns, nodes, lps = list(tree.prompt_ids), [0] * p, [-1] * p, [-1] * p, [0.0] * p
        for k, n in enumerate(tree.path(leaf)):
            node = tree.nodes[n]
            if len(node.gen_logprobs) != len(node.gen_ids):
                raise ValueError(
                    f"tree {tree_index} node {n}: {len(node.gen_ids)} generated ids but "
                    f"{len(node.gen_logprobs)} log-probs"
                )
            no, ng = len(node.obs_ids), len(node.gen_ids)
            ids += node.obs_ids + node.gen_ids
            mask += [0] * no + [1] * ng
            turns += [k] * (no + ng)
            nodes += [n] * (no + ng)
            lps += [0.0] * no + [float(x) for x in node.gen_logprobs]
        rows.append(Row(ids, mask, turns, nodes, lps, float(tree.nodes[leaf].reward), tree_index, leaf, p))
    return rows


def flatten(trees: list[TurnTree]) -> list[Row]:
    """One :class:`Row` per leaf of every tree (trees in order, leaves in ``tree.leaves()`` order)."""
    return [row for t, tree in enumerate(trees) for row in flatten_tree(tree, t)]
