"""Named presets: partial configs (nested dicts) applied before the YAML file and the command-line overrides.

Each preset sets only what defines the method (rollout shape, credit estimator, policy loss, DAPO extras);
data, model and budget settings come from the user. Paper settings from ``AT2PO.md``: AT²PO uses M=10, L=2,
K=6 entropy trees (22 leaves), turn-wise credit (value / child_weighted) and the ATPO turn loss with clip
3e-3/4e-3; the chain baselines sample n=16 trajectories per prompt.

AEPO (Dong et al., arXiv 2510.14545): its entropy-balanced rollout (16 trajectories per prompt, 8 global samples,
beam 2, branch threshold 0.5, entropy weight 0.2, the authors' top-k step entropy; pre-monitoring off, as the
fixed 8 global samples are the paper's setting — ``rollout.aepo.premonitor=true`` turns it on), trajectory-level
GRPO credit, and its entropy-balanced clipping (0.2/0.2, dual clip 3, token-mean) with the paper's entropy-aware
advantage (weight 0.2, applied whether or not an entropy bonus is on; ``loss.entropy_adv_mode=script`` is the
released script's behaviour), no KL.

The progressive ablations follow the paper's table: random tree + token (GRPO) loss → + turn loss →
+ entropy-guided expansion → + turn-wise credit (= ``at2po``).
"""

from __future__ import annotations

import copy
from typing import Any

from at2po.config.errors import ConfigError

_CHAINS = {"mode": "chain", "n": 16}
_RANDOM_TREE = {"mode": "tree", "expansion": "random", "m": 10, "l": 2, "k": 6}
_ENTROPY_TREE = {"mode": "tree", "expansion": "entropy", "m": 10, "l": 2, "k": 6, "alpha": 0.05}
_TOKEN_LOSS = {"name": "token", "clip_low": 0.2, "clip_high": 0.2, "agg": "seq-mean-token-mean"}
_TURN_LOSS = {"name": "turn", "clip_low": 3e-3, "clip_high": 4e-3, "agg": "seq-mean-token-mean", "kl_coef": 0.0}
_TRAJ_CREDIT = {"name": "grpo"}  # trajectory-level, normalised within each prompt's tree / group of chains
_TURN_CREDIT = {"name": "at2po", "value_mode": "child_weighted", "adv_mode": "value", "normalize_leaves": True}

PRESETS: dict[str, dict[str, Any]] = {
    "at2po": {"rollout": _ENTROPY_TREE, "credit": _TURN_CREDIT, "loss": _TURN_LOSS},
    "grpo": {
        "rollout": _CHAINS,
        "credit": _TRAJ_CREDIT,
        "loss": {**_TOKEN_LOSS, "kl_coef": 0.001, "kl_estimator": "k3"},
    },
    "dapo": {
        "rollout": _CHAINS,
        "credit": _TRAJ_CREDIT,
        "loss": {"name": "token", "clip_low": 0.2, "clip_high": 0.28, "agg": "token-mean", "kl_coef": 0.0},
        "train": {"dynamic_sampling": True, "max_gen_batches": 3, "overlong_buffer": 2000, "overlong_penalty": 1.0},
    },
    "gspo": {
        "rollout": _CHAINS,
        "credit": _TRAJ_CREDIT,
        "loss": {"name": "sequence", "clip_low": 3e-4, "clip_high": 4e-4, "agg": "seq-mean-token-mean"},
    },
    "tree-grpo": {
        "rollout": _RANDOM_TREE,
        "credit": {"name": "tree_grpo"},
        "loss": {**_TOKEN_LOSS, "agg": "token-mean"},
    },
    "aepo": {
        "rollout": {"mode": "aepo", "aepo": {"budget": 16, "initial": 8, "beam": 2, "threshold": 0.5,
                                             "entropy_weight": 0.2, "step_entropy": "topk", "premonitor": False}},
        "credit": _TRAJ_CREDIT,
        "loss": {"name": "aepo", "clip_low": 0.2, "clip_high": 0.2, "clip_ratio_c": 3.0, "agg": "token-mean",
                 "kl_coef": 0.0, "entropy_adv_weight": 0.2, "entropy_adv_mode": "paper"},
    },
    "ablation-random-token": {"rollout": _RANDOM_TREE, "credit": _TRAJ_CREDIT, "loss": _TOKEN_LOSS},
    "ablation-random-turn": {"rollout": _RANDOM_TREE, "credit": _TRAJ_CREDIT, "loss": _TURN_LOSS},
    "ablation-entropy-turn": {"rollout": _ENTROPY_TREE, "credit": _TRAJ_CREDIT, "loss": _TURN_LOSS},
}
PRESETS["ablation-full"] = PRESETS["at2po"]


def get_preset(name: str) -> dict[str, Any]:
    """A deep copy of the named preset's partial config; an unknown name is a ConfigError listing the choices."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name])
