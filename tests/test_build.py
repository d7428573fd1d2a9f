"""build: config keys must reach code, values must fit the target's types, facts are stated once."""

from typing import Literal, Sequence

import pytest
from omegaconf import OmegaConf

from attnlab import build
from attnlab.errors import ConfigError


class Thing:
    def __init__(self, *, size: int, mode: Literal["a", "b"] = "a", ratio: float = 0.5, dims: Sequence[int] = (1, 2), name: str | None = None) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self.size, self.mode, self.ratio, self.dims, self.name = size, mode, ratio, list(dims), name


def big_thing(**kw) -> Thing:
    return Thing(**{"size": 100, **kw})


def node(**values):
    return OmegaConf.create({"_target_": f"{__name__}.Thing", **values})


def test_builds_with_valid_values():
    thing = build.instantiate(node(size=3, mode="b", ratio=1, dims=[4, 5], name=None), "model")
    assert (thing.size, thing.mode, thing.ratio, thing.dims) == (3, "b", 1, [4, 5])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"size": "abc"}, "model.size: expected int, got 'abc'"),
        ({"size": True}, "model.size: expected int"),
        ({"size": 1, "mode": "c"}, "model.mode: expected one of: a, b"),
        ({"size": 1, "dims": [1, "x"]}, "model.dims: expected"),
        ({"size": 1, "sise": 2}, "model.sise is not an argument of"),
        ({}, "missing required argument(s) size"),
        ({"size": -1}, "size must be >= 0"),
        ({"size": "???"}, "model.size must be given (it is ??? in the config): add model.size=<value>"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError) as err:
        build.instantiate(node(**values), "model")
    assert message in str(err.value)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid: dims, mode, name, ratio, size"):
        build.instantiate(node(size=1, colour="red"), "model")


def test_facts_flow_only_where_accepted_and_are_never_typed_twice():
    thing = build.instantiate(node(), "model", facts={"size": 7, "vocab_size": 99})
    assert thing.size == 7  # vocab_size is not an argument of Thing: silently not passed
    with pytest.raises(ConfigError, match="model.size comes from the data"):
        build.instantiate(node(size=3), "model", facts={"size": 7})


def test_builder_functions_are_checked_against_the_class_they_return():
    n = OmegaConf.create({"_target_": f"{__name__}.big_thing", "mode": "b"})
    assert build.instantiate(n, "model").size == 100
    with pytest.raises(ConfigError, match="not an argument"):
        build.instantiate(OmegaConf.create({"_target_": f"{__name__}.big_thing", "bogus": 1}), "model")


def test_partial_nodes_skip_required_arguments_and_objects_must_not_be_configured():
    opt = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentum": 0.9})
    factory = build.instantiate(opt, "optimizer")
    import torch

    assert factory([torch.nn.Parameter(torch.zeros(1))]).defaults["momentum"] == 0.9
    with pytest.raises(ConfigError, match="built by attnlab"):
        build.check(node(size=1, name="x"), "task", objects={"name": object()})


def test_unimportable_target():
    with pytest.raises(ConfigError, match="cannot import 'attnlab.models.nope.Model'"):
        build.instantiate(OmegaConf.create({"_target_": "attnlab.models.nope.Model"}), "model")
