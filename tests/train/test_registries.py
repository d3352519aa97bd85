"""Registries open end to end: a user's own policy loss, credit estimator, aggregation, value mode, advantage mode
and expansion mode, registered in their own module, selected by name from a YAML file and from CLI overrides, and
used by the trainer."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import yaml
from typer.testing import CliRunner

from at2po.cli import app
from at2po.config import ConfigError, load_config
from tests.train.conftest import small_overrides

PLUGIN = textwrap.dedent('''
    """A user's plugin: the token loss and GRPO under new names, with call counters."""
    from at2po.core.credit import CREDIT_ESTIMATORS, register_estimator
    from at2po.core.losses import POLICY_LOSSES, register_policy_loss

    CALLS = {"ratio": 0, "credit": 0}

    def counted_ratio(lp, log_ratio, mask_f, tid):
        CALLS["ratio"] += 1
        return POLICY_LOSSES["token"].ratio(lp, log_ratio, mask_f, tid)

    def counted_grpo(arrays, tree_index, group=None, **options):
        CALLS["credit"] += 1
        return CREDIT_ESTIMATORS["grpo"](arrays, tree_index, group, **options)

    register_policy_loss("my_token", counted_ratio, (0.1, 0.3))
    register_estimator("my_grpo")(counted_grpo)

    # the four mode registries, each a copy of a built-in with a call counter
    from at2po.core.credit import ADV_MODES, VALUE_MODES, register_adv_mode, register_value_mode
    from at2po.core.expansion import EXPANSION_MODES, register_expansion_mode
    from at2po.core.losses import AGG_MODES, register_aggregation

    MODES = {"values": 0, "adv": 0, "agg": 0, "expansion": 0}

    @register_value_mode("my_values")
    def my_values(parent, entropy, leaf_values, leaves):
        MODES["values"] += 1
        return VALUE_MODES["child_mean"](parent, entropy, leaf_values, leaves)

    @register_adv_mode("my_adv")
    def my_adv(values, parent):
        MODES["adv"] += 1
        return ADV_MODES["td"](values, parent)

    @register_aggregation("my_token_mean", weight="tokens")
    def my_token_mean(x, mask_f, norm):
        MODES["agg"] += 1
        return AGG_MODES["token-mean"].fn(x, mask_f, norm)

    @register_expansion_mode("my_expansion")
    def my_expansion(parent, entropy, alpha, u):
        MODES["expansion"] += 1
        return EXPANSION_MODES["entropy"].rank_key(parent, entropy, alpha, u)
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_at2po_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_at2po_plugin"
    sys.modules.pop("my_at2po_plugin", None)  # the registrations stay: the names are unique to this test


def test_user_registered_loss_and_estimator_from_yaml_and_cli(plugin, tiny_world, tmp_path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"imports": [plugin], "loss": {"name": "my_token"},
                                        "credit": {"name": "my_grpo"}}))
    cfg = load_config(cfg_file)
    assert cfg.loss.name == "my_token" and cfg.loss.clips() == (0.1, 0.3)  # the clip stored with the loss
    over = [f"{o}" for o in small_overrides(tiny_world, tmp_path / "run")] + ["train.steps=1", "data.test=null",
                                                                               "logging.tensorboard=false"]
    r = CliRunner().invoke(app, ["train", str(cfg_file), *over])
    assert r.exit_code == 0, r.output
    mod = sys.modules[plugin]
    assert mod.CALLS["ratio"] > 0 and mod.CALLS["credit"] == 1  # the trainer used both
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["imports"] == [plugin] and saved["loss"]["name"] == "my_token"
    again = load_config(None, [f"imports=[{plugin}]", "loss.name=my_token", "credit.name=my_grpo"])  # CLI form
    assert again.credit.name == "my_grpo"
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["step"] == 1


def test_user_registered_modes_from_yaml_and_cli(plugin, tiny_world, tmp_path) -> None:
    """Aggregation, value mode, advantage mode and expansion mode of a plugin, selected in YAML and run by the
    trainer (tree rollouts with AT²PO credit); the CLI form loads the same names."""
    cfg_file = tmp_path / "modes.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "imports": [plugin], "loss": {"agg": "my_token_mean"}, "rollout": {"mode": "tree", "expansion": "my_expansion"},
        "credit": {"name": "at2po", "value_mode": "my_values", "adv_mode": "my_adv"},
    }))
    over = small_overrides(tiny_world, tmp_path / "run") + ["train.steps=1", "data.test=null",
                                                            "logging.tensorboard=false"]
    r = CliRunner().invoke(app, ["train", str(cfg_file), *over])
    assert r.exit_code == 0, r.output
    calls = sys.modules[plugin].MODES
    # one rollout with l=1 expansion round, one credit call; the loss aggregates every micro-batch
    assert calls["expansion"] == 1 and calls["values"] == 1 and calls["adv"] == 1 and calls["agg"] > 0, calls
    again = load_config(None, [f"imports=[{plugin}]", "loss.agg=my_token_mean", "rollout.expansion=my_expansion",
                               "credit.value_mode=my_values", "credit.adv_mode=my_adv"])
    assert (again.loss.agg, again.rollout.expansion, again.credit.value_mode, again.credit.adv_mode) == (
        "my_token_mean", "my_expansion", "my_values", "my_adv")


def test_unknown_names_and_plugins_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown policy loss 'nope'; registered: .*'turn'.*register_policy_loss"):
        load_config(None, ["loss.name=nope"])
    with pytest.raises(ConfigError, match="unknown credit estimator 'nope'"):
        load_config(None, ["credit.name=nope"])
    for key, kind, how in [("loss.agg", "loss aggregation", "register_aggregation"),
                           ("credit.value_mode", "value mode", "register_value_mode"),
                           ("credit.adv_mode", "advantage mode", "register_adv_mode"),
                           ("rollout.expansion", "expansion mode", "register_expansion_mode")]:
        with pytest.raises(ConfigError, match=rf"{key}.*unknown {kind} 'nope'; registered: \[.*{how}"):
            load_config(None, [f"{key}=nope"])
    with pytest.raises(ConfigError, match="cannot import 'no_such_plugin_xyz': ModuleNotFoundError"):
        load_config(None, ["imports=no_such_plugin_xyz"])  # a bare string is one module


def test_a_plugin_imported_twice_registers_once_but_a_clash_is_an_error(plugin) -> None:
    import importlib

    from at2po.core.losses import POLICY_LOSSES, register_policy_loss

    importlib.import_module(plugin)
    sys.modules.pop(plugin)
    importlib.import_module(plugin)  # the same functions under the same names again: accepted
    assert "my_token" in POLICY_LOSSES
    with pytest.raises(ValueError, match="policy loss 'my_token' is already registered"):
        register_policy_loss("my_token", lambda *a: None, (0.2, 0.2))
