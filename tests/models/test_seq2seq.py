"""Translation models (TransformerSeq2Seq, LSTMAttention): shapes and gradients of every variant, source padding and
causality invariants, embedding sharing and tying, choices that name the fix, named sizes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.models.lstm_attention import LSTMAttention
from attnlab.models.seq2seq import (
    TransformerSeq2Seq,
    transformer_seq2seq_base,
    transformer_seq2seq_small,
    transformer_seq2seq_tiny,
)

SV, TV, PAD = 30, 34, 0
FACTS = {"src_vocab_size": SV, "tgt_vocab_size": TV, "src_pad_id": PAD, "tgt_pad_id": PAD}
TRANSFORMERS = [(norm, positions) for norm in ("pre", "post") for positions in ("sinusoidal", "learned")]
VARIANTS = [("transformer", {"norm": n, "positions": p}) for n, p in TRANSFORMERS] + [
    ("lstm", {"attention": a}) for a in ("luong", "bahdanau")
]
IDS = [f"transformer-{n}-{p}" for n, p in TRANSFORMERS] + ["lstm-luong", "lstm-bahdanau"]


def tiny(kind: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    if kind == "transformer":
        sizes = {"d_model": 16, "n_heads": 2, "n_enc_layers": 2, "n_dec_layers": 2, "d_ff": 32}
        return TransformerSeq2Seq(**{**FACTS, "max_src_len": 16, "max_tgt_len": 16, **sizes, **kw})
    return LSTMAttention(**{**FACTS, "d_embed": 8, "d_hidden": 16, "n_layers": 2, **kw})


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources (3, 9) of 9, 5 and 1 tokens padded at the end; target inputs (3, 6)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(1, SV, (3, 9), generator=g)
    src = src.masked_fill(torch.arange(9) >= torch.tensor([9, 5, 1])[:, None], PAD)
    return src, torch.randint(1, TV, (3, 6), generator=g)


@pytest.mark.parametrize("kind, kw", VARIANTS, ids=IDS)
def test_shapes_and_gradients_reach_every_parameter(kind, kw):
    # (A scaled tied output starts near uniform; the default fairseq recipe starts above it: see the model's docstring.)
    model = tiny(kind, dropout=0.1, **({"scale_tied_output": True} if kind == "transformer" else {}), **kw)
    src, tgt_in = batch()
    logits = model(src, tgt_in)
    assert logits.shape == (3, 6, TV)
    loss = F.cross_entropy(logits.flatten(0, 1), torch.randint(1, TV, (18,)))
    assert abs(loss.item() - torch.log(torch.tensor(float(TV))).item()) < 0.3  # starts near uniform
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@torch.no_grad()
@pytest.mark.parametrize("kind, kw", VARIANTS, ids=IDS)
def test_source_padding_never_changes_the_logits(kind, kw):
    model = tiny(kind, **kw).eval()
    src, tgt_in = batch()
    logits = model(src, tgt_in)
    torch.testing.assert_close(model(F.pad(src, (0, 4), value=PAD), tgt_in), logits, atol=1e-5, rtol=1e-5)
    for i, n in enumerate((9, 5, 1)):  # each source alone, unpadded
        torch.testing.assert_close(model(src[i : i + 1, :n], tgt_in[i : i + 1]), logits[i : i + 1], atol=1e-5, rtol=1e-5)
    empty = torch.full((1, 4), PAD)  # a source with no token at all still gives finite logits
    assert torch.isfinite(model(empty, tgt_in[:1])).all()


@torch.no_grad()
@pytest.mark.parametrize("kind, kw", VARIANTS, ids=IDS)
def test_changing_a_target_token_never_changes_earlier_logits(kind, kw):
    model = tiny(kind, **kw).eval()
    src, tgt_in = batch()
    logits = model(src, tgt_in)
    for t in range(tgt_in.size(1)):
        changed = tgt_in.clone()
        changed[:, t] = changed[:, t] % (TV - 1) + 1
        other = model(src, changed)
        torch.testing.assert_close(other[:, :t], logits[:, :t], atol=1e-5, rtol=0)
        assert not torch.allclose(other[:, t], logits[:, t])


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_embeddings_are_shared_only_with_one_vocabulary(kind):
    one = {**FACTS, "tgt_vocab_size": SV}
    model = tiny(kind, **{**one, "shared_vocab": True})
    assert model.src_embed is model.tgt_embed
    assert tiny(kind, **{**one, "shared_vocab": True, "share_embeddings": False}).src_embed is not model.tgt_embed
    for facts in ({**one, "shared_vocab": False}, {**FACTS, "shared_vocab": True}):  # two vocabularies; sizes differ
        separate = tiny(kind, **facts)
        assert separate.src_embed is not separate.tgt_embed


def test_transformer_output_is_tied_to_the_target_embedding_unless_asked_not_to():
    tied = tiny("transformer")
    assert tied.output_layer().weight is tied.tgt_embed.weight
    untied = tiny("transformer", tie_output=False)
    assert untied.output_layer().weight is not untied.tgt_embed.weight
    assert tied.tgt_embed.weight[PAD].abs().sum() == 0  # the pad row starts at zero


def test_bad_choices_name_the_valid_ones():
    with pytest.raises(ValueError, match="unknown norm 'mid'; choose one of: pre, post"):
        tiny("transformer", norm="mid")
    with pytest.raises(ValueError, match="unknown positions 'rotary'; choose one of: sinusoidal, learned"):
        tiny("transformer", positions="rotary")
    with pytest.raises(ValueError, match="unknown attention 'dot'; choose one of: bahdanau, luong"):
        tiny("lstm", attention="dot")


def test_transformer_refuses_targets_longer_than_its_positions():
    model = tiny("transformer")
    src, _ = batch()
    with pytest.raises(ValueError, match="exceeds max_len 16"):
        model(src, torch.ones(3, 17, dtype=torch.long))


def test_named_sizes():
    kw = {**FACTS, "max_src_len": 8, "max_tgt_len": 8}
    tiny_model, small = transformer_seq2seq_tiny(**kw), transformer_seq2seq_small(**kw, n_heads=8)
    assert (len(tiny_model.encoder), len(tiny_model.decoder), tiny_model.tgt_embed.embedding_dim) == (2, 2, 128)
    assert (len(small.encoder), small.tgt_embed.embedding_dim, small.decoder[0].attn.n_heads) == (3, 256, 8)
    with torch.device("meta"):  # the shape only: no memory, no init time
        base = transformer_seq2seq_base(**kw)
    assert (len(base.encoder), len(base.decoder), base.tgt_embed.embedding_dim) == (6, 6, 512)


@pytest.mark.parametrize("kind, kw", VARIANTS, ids=IDS)
def test_cross_attention_weights_are_distributions_over_the_real_source(kind, kw):
    model = tiny(kind, **kw).eval()
    src, tgt_in = batch()
    weights = model.cross_attention(src, tgt_in)  # (B, T, S)
    assert weights.shape == (3, 6, 9)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 6))
    assert weights.masked_select((src == PAD)[:, None, :].expand_as(weights)).eq(0).all()  # never on padding
    # The second sentence alone (its padding cut off) gets the same weights.
    alone = model.cross_attention(src[1:2, :5], tgt_in[1:2])[0]
    torch.testing.assert_close(alone, weights[1, :, :5])


def test_written_out_attention_weights_give_the_fused_attentions_output():
    from attnlab.models.layers import MultiHeadAttention

    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=16, n_heads=4).eval()
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    mask = (torch.arange(7) < torch.tensor([7, 4])[:, None])[:, None, None, :]  # (B, 1, 1, S)
    kv = mha.context_kv(memory)
    w = mha.weights(x, kv, mask)  # (B, nh, T, S)
    by_hand = mha.out_proj((w @ kv[1]).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(by_hand, mha(x, mask=mask, context_kv=kv), rtol=1e-5, atol=1e-6)
