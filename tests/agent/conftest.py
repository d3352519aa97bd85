"""Shared agent fixtures: the real-text Wikipedia benchmark, built once per session (~2 s)."""

from __future__ import annotations

import pytest

from at2po.agent.wiki import make_wiki


@pytest.fixture(scope="session")
def wiki(tmp_path_factory):
    return make_wiki(tmp_path_factory.mktemp("wiki"), seed=0)
