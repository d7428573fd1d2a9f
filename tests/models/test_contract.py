"""The contract every model in conf/model/ keeps, one parametrised test over the folder (as timm tests its registry).

Each model config is composed by Hydra as a run would compose it, shrunk through its size arguments, and built by
attnlab.build with the facts of a tiny data module of its family; the family comes from what the constructor takes
(image_size: images; src_vocab_size: translation; vocab_size with num_classes: text classification; vocab_size
alone: language modelling), so a new model file is tested without an edit here, or fails until its family is known.
A trained model then runs forward and backward to a finite loss with a finite gradient on every parameter, states
its output layer (the last module with weights to run, of the output's shape), and its state_dict saved with
torch.save and read back with `torch.load(weights_only=True)` into a fresh instance gives identical outputs in eval
mode. A count-based model (one with `fit`, no parameters) is fitted, scored and round-tripped instead; a classical
estimator (scikit-learn, from the data's `target_kind`) is fitted on a tiny table, predicts and round-trips through
skops to the same predictions.
"""

import io

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from torch import nn

from attnlab import build
from attnlab.config import conf_dir

CONF = conf_dir()
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
B, T = 3, 12
# The facts a tiny data module of each family gives (the keys of its facts()).
IMAGE_FACTS = {"in_channels": 1, "image_size": 28, "num_classes": 5, "class_names": list("abcde")}
TEXT_FACTS = {"vocab_size": 40, "pad_id": 0, "max_len": 16, "num_classes": 3, "class_names": ["a", "b", "c"]}
LM_FACTS = {"vocab_size": 40, "max_len": 16, "eos_id": 1, "token_bytes": None, "tokenizer": None}
TABLE_FACTS = {"in_features": 6, "num_numeric": 4, "cat_cardinalities": [3, 2], "num_classes": 3,
               "class_names": ["a", "b", "c"], "target_kind": "classification"}
SEQ2SEQ_FACTS = {"src_vocab_size": 40, "tgt_vocab_size": 44, "src_pad_id": 0, "tgt_pad_id": 0, "sos_id": 2, "eos_id": 3,
                 "max_src_len": 16, "max_tgt_len": 16, "shared_vocab": False}
# Size arguments, shrunk wherever a model takes them (a value per type where models differ: CNN's hidden is a
# width, MLP's a list of widths), so every model builds and runs in a fraction of a second.
TINY = {
    "d_model": [16], "n_layers": [1], "n_heads": [2], "d_ff": [32], "d_embed": [8], "d_hidden": [16],
    "channels": [[4, 8]], "latent_dim": [8], "hidden": [16, [16]], "n_layer": [1], "n_embd": [16], "n_head": [2],
    "n_enc_layers": [1], "n_dec_layers": [1],
}
# Models whose config names a hub checkpoint are built offline from their architecture's config, at a tiny size.
OFFLINE = {
    "hf_classifier": {"name_or_path": "distilbert", "pretrained": False,
                      "config": {"dim": 16, "n_layers": 1, "n_heads": 2, "hidden_dim": 32, "max_position_embeddings": 16}},
}


def model_config(name: str):
    """The model node Hydra composes for `model=<name>`, with tiny sizes and no hub download."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        node = compose(f"model/{name}").model  # the option alone: what `model=<name>` puts under cfg.model, 3x faster
    with open_dict(node):
        if "seed" in node:  # an estimator's ${seed} (the run's) has no root config here
            node["seed"] = 0
    params, hints, _ = build.parameters(build.check(node, "model", facts={**IMAGE_FACTS, **TEXT_FACTS, **LM_FACTS,
                                                                          **SEQ2SEQ_FACTS, **TABLE_FACTS}))
    with open_dict(node):
        for key, candidates in TINY.items():
            if key in params:
                node[key] = next(v for v in candidates if build.matches(v, hints.get(key, object)))
        for key, value in OFFLINE.get(name, {}).items():
            node[key] = value
    if node.get("name_or_path") and name not in OFFLINE:
        pytest.fail(f"model={name} names the hub checkpoint {node.name_or_path}: add a tiny offline build to OFFLINE")
    return node, params


def family(name: str, params: dict) -> str:
    if "image_size" in params:
        return "image_classifier" if "num_classes" in params else "reconstruction"
    if "src_vocab_size" in params:
        return "seq2seq"
    if "target_kind" in params:
        return "estimator"
    if "num_numeric" in params or "in_features" in params:
        return "table"
    if "vocab_size" in params:
        return "text_classifier" if "num_classes" in params else "language_model"
    pytest.fail(f"model={name} takes none of image_size, src_vocab_size, vocab_size: teach tests/models/test_contract.py its family")


FACTS = {"image_classifier": IMAGE_FACTS, "reconstruction": IMAGE_FACTS, "text_classifier": TEXT_FACTS,
         "language_model": LM_FACTS, "seq2seq": SEQ2SEQ_FACTS, "table": TABLE_FACTS, "estimator": TABLE_FACTS}


def batch(kind: str, seed: int = 0) -> tuple[torch.Tensor | dict[str, torch.Tensor], torch.Tensor]:
    """(inputs, targets) as the family's data module batches them."""
    g = torch.Generator().manual_seed(seed)
    if kind in ("image_classifier", "reconstruction"):
        x = torch.rand(B, IMAGE_FACTS["in_channels"], IMAGE_FACTS["image_size"], IMAGE_FACTS["image_size"], generator=g)
        return x, (x if kind == "reconstruction" else torch.randint(0, IMAGE_FACTS["num_classes"], (B,), generator=g))
    if kind in ("table", "estimator"):  # 4 standardised values, then ordinal category ids (-1: unknown)
        cats = torch.stack([torch.randint(-1, c, (B,), generator=g) for c in TABLE_FACTS["cat_cardinalities"]], 1)
        return torch.cat([torch.randn(B, TABLE_FACTS["num_numeric"], generator=g), cats.float()], 1), torch.randint(
            0, TABLE_FACTS["num_classes"], (B,), generator=g)
    if kind == "text_classifier":
        ids = torch.randint(1, TEXT_FACTS["vocab_size"], (B, T), generator=g)
        mask = torch.arange(T) < torch.tensor([T, T - 4, 2])[:, None]  # padding at the end, one short text
        return {"input_ids": ids.masked_fill(~mask, TEXT_FACTS["pad_id"]), "attention_mask": mask}, torch.randint(
            0, TEXT_FACTS["num_classes"], (B,), generator=g)
    if kind == "seq2seq":
        src = torch.randint(4, SEQ2SEQ_FACTS["src_vocab_size"], (B, T), generator=g)
        src = src.masked_fill(torch.arange(T) >= torch.tensor([T, T - 4, 2])[:, None], SEQ2SEQ_FACTS["src_pad_id"])
        tgt = torch.randint(4, SEQ2SEQ_FACTS["tgt_vocab_size"], (B, T + 1), generator=g)
        tgt[:, 0] = SEQ2SEQ_FACTS["sos_id"]
        return {"src": src, "tgt_in": tgt[:, :-1]}, tgt[:, 1:]
    ids = torch.randint(0, LM_FACTS["vocab_size"], (B, T + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def run(model: nn.Module, inputs) -> torch.Tensor:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def loss_of(kind: str, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if kind == "reconstruction":
        assert out.shape == targets.shape
        return F.mse_loss(out, targets)
    if kind in ("language_model", "seq2seq"):
        vocab_size = LM_FACTS["vocab_size"] if kind == "language_model" else SEQ2SEQ_FACTS["tgt_vocab_size"]
        assert out.shape == (B, T, vocab_size)
        return F.cross_entropy(out.flatten(0, 1), targets.flatten())
    assert out.shape == (B, FACTS[kind]["num_classes"])
    return F.cross_entropy(out, targets)


def weighted_modules_in_call_order(model: nn.Module, inputs) -> list[nn.Module]:
    """The submodules holding parameters of their own, in the order their forward finished."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules()
             if m is not model and any(True for _ in m.parameters(recurse=False))]
    try:
        with torch.no_grad():
            run(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return order


def round_trip(model: nn.Module, fresh: nn.Module, inputs) -> None:
    """model's state_dict through torch.save / torch.load(weights_only=True) into fresh: identical eval outputs."""
    model.eval()
    fresh.eval()
    with torch.no_grad():
        expected = run(model, inputs)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
        assert torch.equal(run(fresh, inputs), expected)


@pytest.mark.parametrize("name", MODELS)
def test_model_contract(name):
    node, params = model_config(name)
    kind = family(name, params)
    facts = FACTS[kind]
    torch.manual_seed(0)
    model = build.instantiate(node, "model", facts)
    torch.manual_seed(1)
    fresh = build.instantiate(node, "model", facts)
    inputs, targets = batch(kind)
    if kind == "estimator":
        return estimator_contract(model)
    if hasattr(model, "fit"):
        return count_model_contract(model, fresh, inputs)

    model.train()
    loss = loss_of(kind, run(model, inputs), targets)
    assert torch.isfinite(loss), f"{name}: loss {loss.item()}"
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"

    model.eval()
    head = model.output_layer()
    called = weighted_modules_in_call_order(model, inputs)
    assert called and called[-1] is head, f"{name}: output_layer() is {type(head).__name__}, last to run {type(called[-1]).__name__}"
    produced = []
    hook = head.register_forward_hook(lambda m, i, o: produced.append(o))
    with torch.no_grad():
        out = run(model, inputs)
    hook.remove()
    assert produced[0].shape == out.shape

    with torch.no_grad():
        assert not torch.equal(run(fresh.eval(), inputs), out), f"{name}: two seeds built the same weights"
    round_trip(model, fresh, inputs)


def count_model_contract(model: nn.Module, fresh: nn.Module, inputs: torch.Tensor) -> None:
    """A count-based model: no parameters, fit on a token stream, normalised finite log-probs, state_dict round trip."""
    assert not list(model.parameters()) and model.output_layer() is None
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh(inputs)
    stream = torch.randint(0, LM_FACTS["vocab_size"], (500,), generator=torch.Generator().manual_seed(2))
    model.fit(stream)
    logp = model(inputs)
    assert logp.shape == (B, T, LM_FACTS["vocab_size"]) and torch.isfinite(logp).all()
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(B, T))
    round_trip(model, fresh, inputs)



def estimator_contract(estimator) -> None:
    """A scikit-learn estimator: fits a tiny learnable table, predicts every row, and its skops file (scikit-learn
    types only, loaded without pickle) predicts the same."""
    from attnlab.runs import load_skops, save_skops

    rng = torch.Generator().manual_seed(3)
    x = torch.randn(90, 5, generator=rng).numpy()
    y = (x[:, 0] > 0.4).astype(int) + (x[:, 1] > 0.4).astype(int)  # 3 classes
    estimator.fit(x, y)
    pred = estimator.predict(x)
    assert pred.shape == (90,) and (pred == y).mean() > 0.6
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        save_skops(estimator, Path(tmp) / "m.skops")
        assert (load_skops(Path(tmp) / "m.skops").predict(x) == pred).all()
