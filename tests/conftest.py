"""Fixtures shared across test packages."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def calc_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The calculator example's fresh tiny model (byte-level BPE tokenizer + random 2-layer Llama), built once."""
    from at2po.envs.calculator import tiny_model

    return tiny_model(tmp_path_factory.mktemp("calc") / "init")


@pytest.fixture(scope="session")
def calc_tok(calc_init: Path):
    from at2po.train.components import load_tokenizer

    return load_tokenizer(calc_init)
