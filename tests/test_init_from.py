"""init_from: another run's model weights in a new model, matched by name and shape; applied before the transform."""

import logging

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from attnlab import build, runs
from attnlab.errors import ConfigError


def net(hidden: int = 8, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(hidden)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def save_ckpt(model: nn.Module, path):
    """A Lightning-style checkpoint of a task holding `model` as self.model."""
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 0}, path)
    return path


def test_match_by_name_and_shape():
    source = {**net().state_dict(), "extra.weight": torch.zeros(2)}
    del source["0.bias"]
    match = runs.match_weights(net(hidden=5).state_dict(), source)
    assert match.missing == ["0.bias"] and match.unexpected == ["extra.weight"]
    assert match.mismatched == [("2.weight", (5, 6), (8, 6)), ("2.bias", (5,), (8,)), ("4.weight", (3, 5), (3, 8))]
    assert "0.weight" in match.matched and "4.bias" in match.matched and "1.running_mean" in match.matched
    assert not match.complete
    assert runs.match_weights(net().state_dict(), net().state_dict()).complete


def test_strict_loads_everything_or_names_what_does_not_fit(tmp_path):
    source = net()
    ckpt = save_ckpt(source, tmp_path / "a.ckpt")
    same = net(hidden=8)
    torch.manual_seed(99)
    for p in same.parameters():
        nn.init.normal_(p)
    assert runs.init_weights(same, ckpt).complete
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in same.state_dict().items())

    with pytest.raises(ConfigError) as err:
        runs.init_weights(net(hidden=5), ckpt)
    message = str(err.value)
    assert "2.weight: shape [5, 6] here, [8, 6] in the source" in message and "4.weight" in message
    assert "init_from_strict=false" in message and "0.weight" not in message


def test_non_strict_loads_what_fits_and_warns_about_the_rest(tmp_path, caplog):
    source = net()
    ckpt = save_ckpt(source, tmp_path / "a.ckpt")
    target = net(hidden=5)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="attnlab"):
        match = runs.init_weights(target, ckpt, strict=False)
    state = target.state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.running_var", "4.bias"):  # the features, and a bias that fits
        assert torch.equal(state[name], source.state_dict()[name]), name
    for name in ("2.weight", "2.bias", "4.weight"):  # the new head keeps its initial values
        assert torch.equal(state[name], fresh[name]), name
    assert sorted(n for n, *_ in match.mismatched) == ["2.bias", "2.weight", "4.weight"]
    assert "2.weight: shape [5, 6] here, [8, 6] in the source" in caplog.text


def test_nothing_fits_is_an_error_even_when_not_strict(tmp_path):
    ckpt = save_ckpt(nn.Linear(3, 3), tmp_path / "a.ckpt")  # weight, bias: no such names in net()
    with pytest.raises(ConfigError, match="no tensor of it fits this model"):
        runs.init_weights(net(), ckpt, strict=False)


def test_the_source_is_a_run_directory_or_a_checkpoint_file(tmp_path):
    with pytest.raises(ConfigError, match="init_from=.*no such run directory or .ckpt file"):
        runs.resolve_init_from(tmp_path / "missing")
    with pytest.raises(ConfigError, match="init_from=.*is not an attnlab run directory"):
        runs.resolve_init_from(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\n")
    (run / "manifest.json").write_text("{}\n")
    with pytest.raises(ConfigError, match="init_from=.*no checkpoint"):
        runs.resolve_init_from(run)
    best = save_ckpt(net(), run / "checkpoints" / "best-epoch003.ckpt")
    save_ckpt(net(), run / "checkpoints" / "last.ckpt")
    assert runs.resolve_init_from(run) == best
    assert runs.resolve_init_from(run / "checkpoints" / "last.ckpt") == run / "checkpoints" / "last.ckpt"


MLP = {"_target_": "attnlab.models.mlp.MLPClassifier", "hidden": [16]}
FACTS = {"in_channels": 1, "image_size": 4, "num_classes": 3}


def test_weights_load_into_the_plain_model_before_the_transform(monkeypatch):
    order = []
    transform = build.transform_model
    monkeypatch.setattr(build, "transform_model",
                        lambda model, cfg, facts=None: order.append("transform") or transform(model, cfg, facts))
    cfg = OmegaConf.create({"model": MLP, "compile": True})
    model = build.make_model(cfg, FACTS, init=lambda m: order.append(("init", getattr(m, "_compiled_call_impl", None))))
    assert order == [("init", None), "transform"]  # init saw the plain, uncompiled model
    assert model._compiled_call_impl is not None
    plain = build.make_model(OmegaConf.create({"model": MLP}), FACTS)
    assert list(model.state_dict()) == list(plain.state_dict())  # the transform keeps the plain model's keys
