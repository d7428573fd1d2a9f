"""Switching a group away from an experiment's choice: it works, or one line names the experiment's stale keys
and the overrides that fix them; applying those overrides then composes and checks."""

import re

import pytest
from omegaconf import OmegaConf

from attnlab import build
from attnlab.errors import ConfigError
from test_configs import EXPERIMENT_NEEDS, check_all, composed, options

# Per experiment: another optimizer and a sibling model of the same family (what a user tries next).
OTHER_MODEL = {"mnist": "vit", "imdb": "gru", "tinystories": "lstm_lm", "multi30k": "lstm_attention",
               "tatoeba": "lstm_attention", "pretrain": "gpt", "wine": "mlp", "california": "ft_transformer",
               "boston": "linear", "imdb_mlm": "distilbert"}  # a masked-LM run pretrains encoders only
SWITCHES = [
    (experiment, f"optimizer={'adamw' if experiment.endswith(('_gpt', '_lstm')) and experiment.startswith('tiny') else 'muon'}")
    for experiment in options("experiment") if experiment != "tinystories_ngram"
] + [
    (experiment, f"model={OTHER_MODEL.get('_'.join(experiment.split('_')[:2])) or OTHER_MODEL[experiment.split('_')[0]]}")
    for experiment in options("experiment")
    if not experiment.endswith(("_vit", "_gru", "_lstm", "_ae", "_attention")) and not experiment.startswith("scitldr")
] + [("mnist_cnn", "scheduler=plateau"), ("tinystories_gpt", "data=tinystories"), ("imdb_bert", "tokenizer@data.tokenizer=bpe"),
     ("scitldr_lora", "peft=ia3"), ("scitldr_full", "peft=lora"), ("scitldr_prompt", "peft=prefix_tuning")]


def switch_check(overrides: list[str]):
    cfg = composed(overrides)
    build.check_switched_groups(cfg, cfg.hydra.runtime.choices, list(cfg.hydra.overrides.task))
    check_all(cfg)
    return cfg


@pytest.mark.parametrize("experiment, switch", SWITCHES, ids=[f"{e}+{s}" for e, s in SWITCHES])
def test_switching_a_group_works_or_names_the_fix(experiment, switch):
    overrides = [f"experiment={experiment}", *EXPERIMENT_NEEDS.get(experiment, []), switch]
    try:
        switch_check(overrides)
        return
    except ConfigError as err:
        message = str(err)
    assert "\n" not in message and f"set by experiment={experiment} for " in message, message
    fix = message.rpartition(": ")[2].split()
    assert fix and all(re.match(r"^(~[\w.]+|[\w.]+=\S+)$", f) for f in fix), message
    switch_check([*overrides, *fix])  # the named fix is all it takes


def test_the_stale_muon_key_is_named():
    with pytest.raises(ConfigError) as err:
        switch_check(["experiment=tinystories_gpt", "optimizer=adamw"])
    assert str(err.value) == ("optimizer.adam_lr was set by experiment=tinystories_gpt for optimizer=muon; "
                              "for optimizer=adamw: ~optimizer.adam_lr")


def test_a_stale_target_is_set_back_to_the_new_choices():
    with pytest.raises(ConfigError, match=r"model._target_, model.positions, model.activation were set by "
                       r"experiment=tinystories_gpt for model=gpt; for model=lstm_lm: "
                       r"model._target_=attnlab.models.lstm_lm.LSTMLM ~model.positions ~model.activation"):
        switch_check(["experiment=tinystories_gpt", "model=lstm_lm"])


def test_carried_over_values_are_reported(caplog):
    cfg = switch_check(["experiment=mnist_cnn", "optimizer=sgd"])
    assert cfg.optimizer.lr == 3e-3  # the experiment's value still applies: Hydra merges it over the choice
    assert "experiment=mnist_cnn set optimizer.lr, optimizer.weight_decay for optimizer=adamw; they apply to optimizer=sgd too" in caplog.text
    caplog.clear()
    switch_check(["experiment=mnist_cnn", "optimizer=sgd", "optimizer.lr=0.1"])  # the user's own value: not stale
    assert "optimizer.lr," not in caplog.text
