"""Text models: shapes and gradients, packing invariance (padding changes nothing), masks, named sizes, HF wrapper."""

import pytest
import torch

from attnlab.models import encoder as enc
from attnlab.models.hf import HFClassifier
from attnlab.models.rnn import RNNClassifier

V, C, PAD = 50, 3, 0


def padded_batch(lengths: list[int], T: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) with random real tokens (ids >= 1) followed by padding, and the mask (B, T)."""
    g = torch.Generator().manual_seed(seed)
    T = T or max(lengths)
    ids = torch.randint(1, V, (len(lengths), T), generator=g)
    mask = torch.arange(T) < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, PAD), mask


RNNS = [
    dict(cell=cell, bidirectional=bi, pooling=pool, n_layers=layers)
    for cell, bi, pool, layers in [
        ("lstm", False, "last", 1), ("lstm", True, "last", 2), ("lstm", True, "mean", 1), ("lstm", True, "max", 2),
        ("gru", True, "max", 1), ("gru", False, "mean", 2), ("rnn", True, "last", 1), ("rnn", False, "max", 1),
    ]
]
ENCODERS = {
    "bert_tiny": lambda: enc.bert_tiny(vocab_size=V, num_classes=C, max_len=16, dropout=0.1),
    "roberta_tiny_mean": lambda: enc.roberta_tiny(vocab_size=V, num_classes=C, max_len=16, pool="mean"),
    "distilbert_tiny_sin": lambda: enc.distilbert_tiny(vocab_size=V, num_classes=C, max_len=16, positions="sinusoidal"),
}


def rnn(**kw) -> RNNClassifier:
    return RNNClassifier(vocab_size=V, num_classes=C, pad_id=PAD, d_embed=8, d_hidden=12, dropout=0.1, **kw)


def assert_padding_invariant(model: torch.nn.Module) -> None:
    """Logits of a padded batch equal those of each example alone, unpadded (and extra padding changes nothing)."""
    model.eval()
    ids, mask = padded_batch([7, 3, 10, 1], T=14)
    batched = model(ids, mask)
    assert batched.shape == (4, C)
    for i, n in enumerate([7, 3, 10, 1]):
        alone = model(ids[i : i + 1, :n], mask[i : i + 1, :n])
        torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-5)
    garbage = ids.masked_fill(~mask, V - 1)  # whatever sits in the padding is never read
    torch.testing.assert_close(model(garbage, mask), batched, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", RNNS, ids=[f"{k['cell']}-{'bi' if k['bidirectional'] else 'uni'}-{k['pooling']}-{k['n_layers']}" for k in RNNS])
def test_rnn_padding_invariance(kw):
    torch.manual_seed(0)
    assert_padding_invariant(rnn(**kw))


@pytest.mark.parametrize("kw", RNNS[1:5], ids=["lstm-bi-last-2", "lstm-bi-mean", "lstm-bi-max-2", "gru-bi-max"])
def test_rnn_equals_torch_packed_sequences(kw):
    torch.manual_seed(0)
    model = rnn(**kw).eval()
    ids, mask = padded_batch([7, 3, 10, 1], T=14)
    unpacked = model(ids, mask)
    model.packed = True  # the same weights, run on torch's PackedSequence
    torch.testing.assert_close(model(ids, mask), unpacked, atol=1e-5, rtol=1e-5)


def test_rnn_reads_packed_sequences_exactly_when_no_gradient_is_taken(monkeypatch):
    """packed="inference" (the default): PackedSequence under no_grad / inference_mode on CPU, the padded path while
    training; the same logits either way."""
    from attnlab.models import rnn as rnn_module

    calls = []
    real = rnn_module.pack_padded_sequence
    monkeypatch.setattr(rnn_module, "pack_padded_sequence", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = rnn(cell="lstm", bidirectional=True, pooling="max").eval()
    assert model.packed == "inference"
    ids, mask = padded_batch([7, 3, 10, 1], T=14)
    padded = model(ids, mask)
    assert not calls  # gradients on: the padded path
    with torch.inference_mode():
        packed = model(ids, mask)
    assert len(calls) == 2  # one layer, two directions
    torch.testing.assert_close(packed, padded.detach(), atol=1e-5, rtol=1e-5)
    model.packed = False
    with torch.no_grad():
        model(ids, mask)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="packed must be"):
        rnn(packed="always")


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_padding_invariance(name):
    torch.manual_seed(0)
    assert_padding_invariant(ENCODERS[name]())


@pytest.mark.parametrize("build", [lambda: rnn(cell="lstm", bidirectional=True, pooling="max"), ENCODERS["bert_tiny"]])
def test_shapes_and_gradients(build):
    model = build()
    ids, mask = padded_batch([5, 9, 2])
    logits = model(ids, mask)
    assert logits.shape == (3, C)
    logits.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "type_embed" not in n)
    assert model(ids).shape == (3, C)  # no mask: every token is real


def test_encoder_mask_hides_padding_and_survives_empty_texts():
    torch.manual_seed(0)
    model = ENCODERS["roberta_tiny_mean"]().eval()
    ids, mask = padded_batch([4, 6])
    empty = torch.zeros_like(mask)
    assert torch.isfinite(model(ids, empty)).all() and torch.isfinite(rnn(pooling="mean")(ids, empty)).all()
    # Without the mask the padding is attended to, and the logits change: the mask is what makes them equal.
    assert not torch.allclose(model(ids)[0], model(ids, mask)[0])


def test_encoder_families_differ_as_published():
    kw = dict(vocab_size=V, num_classes=C, max_len=16)
    bert, roberta, distil = enc.bert_mini(**kw), enc.roberta_mini(**kw), enc.distilbert_mini(**kw)
    assert bert.type_embed is not None and roberta.type_embed is None and distil.type_embed is None
    assert len(bert.blocks) == len(roberta.blocks) == 4 and len(distil.blocks) == 2
    assert isinstance(bert.pooler, torch.nn.Sequential) and isinstance(distil.pooler, torch.nn.Identity)
    assert len(enc.bert_mini(**kw, n_layers=1).blocks) == 1  # YAML can override any size
    segments = torch.tensor([[0, 0, 1, 1]])
    ids = torch.tensor([[1, 2, 3, 4]])
    assert not torch.allclose(bert.eval()(ids, token_type_ids=segments), bert(ids))



def test_attention_dropout_is_its_own_setting():
    kw = dict(vocab_size=V, num_classes=C, max_len=16, dropout=0.2)
    same, off = enc.bert_tiny(**kw), enc.bert_tiny(**kw, attn_dropout=0.0)
    assert [b.attn.dropout for b in same.blocks] == [0.2, 0.2] and [b.attn.dropout for b in off.blocks] == [0.0, 0.0]
    assert all(b.drop.p == 0.2 for b in off.blocks)  # the residual branches keep theirs
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    for m in off.train().modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    assert torch.equal(off(ids), off(ids))  # in training, nothing random is left once the other dropouts are off

@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: rnn(cell="lsmt"), "unknown cell 'lsmt'; choose one of: rnn, lstm, gru"),
        (lambda: rnn(pooling="sum"), "unknown pooling 'sum'; choose one of: last, mean, max"),
        (lambda: enc.bert_tiny(vocab_size=V, num_classes=C, max_len=8, pool="first"), "unknown pool 'first'"),
        (lambda: enc.bert_tiny(vocab_size=V, num_classes=C, max_len=8, n_heads=3), "not divisible by n_heads"),
    ],
)
def test_bad_choices_name_the_valid_ones(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_encoder_rejects_texts_longer_than_max_len():
    with pytest.raises(ValueError, match="exceeds max_len 16"):
        ENCODERS["bert_tiny"]()(torch.ones(1, 17, dtype=torch.long))


def test_hf_classifier_from_a_tiny_random_config():
    torch.manual_seed(0)
    config = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
              "max_position_embeddings": 32}
    model = HFClassifier(name_or_path="bert", num_classes=C, vocab_size=V, pad_id=PAD, pretrained=False, config=config)
    assert model.model.config.vocab_size == V and model.model.config.num_labels == C
    assert_padding_invariant(model)
