"""Parity and invariant tests for the shared transformer layers."""

import pytest
import torch
from torch import nn

from attnlab.models.layers import (
    MLP,
    Block,
    DecoderBlock,
    KVCache,
    LearnedPositions,
    MultiHeadAttention,
    PostNormBlock,
    PostNormDecoderBlock,
    SinusoidalPositions,
)

D, H = 16, 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _mha_pair() -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    """Our attention and torch's, holding the same weights."""
    ours = MultiHeadAttention(d_model=D, n_heads=H).eval()
    ref = nn.MultiheadAttention(D, H, batch_first=True).eval()
    with torch.no_grad():
        ours.q_proj.weight.copy_(ref.in_proj_weight[:D])
        ours.kv_proj.weight.copy_(ref.in_proj_weight[D:])
        ours.q_proj.bias.copy_(ref.in_proj_bias[:D])
        ours.kv_proj.bias.copy_(ref.in_proj_bias[D:])
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())
    return ours, ref


def test_attention_matches_torch_reference() -> None:
    ours, ref = _mha_pair()
    x = torch.randn(2, 5, D)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=0)


def test_attention_matches_torch_with_padding_and_causal_masks() -> None:
    ours, ref = _mha_pair()
    x = torch.randn(2, 5, D)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])  # torch: True = ignore
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)  # torch: True = ignore
    expected, _ = ref(x, x, x, key_padding_mask=pad, need_weights=False)
    torch.testing.assert_close(ours(x, mask=~pad[:, None, None, :]), expected, atol=1e-5, rtol=0)
    expected, _ = ref(x, x, x, attn_mask=causal, need_weights=False)
    torch.testing.assert_close(ours(x, is_causal=True), expected, atol=1e-5, rtol=0)


def test_key_padding_mask_hides_padded_keys() -> None:
    attn = MultiHeadAttention(d_model=D, n_heads=H).eval()
    x = torch.randn(2, 6, D)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[0, 4:] = False
    keep[1, 2:] = False
    mask = keep[:, None, None, :]  # (B, 1, 1, S)
    y = attn(x, mask=mask)
    x2 = x.clone()
    x2[~keep] = torch.randn(int((~keep).sum()), D) * 10
    y2 = attn(x2, mask=mask)
    # Queries at real positions must not see what sits at padded positions.
    torch.testing.assert_close(y[keep], y2[keep], atol=1e-5, rtol=0)


@pytest.mark.parametrize("with_mask", [False, True])
def test_causal_attention_ignores_the_future(with_mask: bool) -> None:
    block = Block(d_model=D, n_heads=H, d_ff=32).eval()
    x = torch.randn(2, 7, D)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool) if with_mask else None
    y = block(x, mask=mask, is_causal=True)
    for t in range(7):
        x2 = x.clone()
        x2[:, t] = torch.randn(2, D)
        y2 = block(x2, mask=mask, is_causal=True)
        torch.testing.assert_close(y[:, :t], y2[:, :t], atol=1e-5, rtol=0)
        assert not torch.allclose(y[:, t], y2[:, t])


def test_cross_attention_shapes() -> None:
    attn = MultiHeadAttention(d_model=D, n_heads=H)
    x, context = torch.randn(3, 4, D), torch.randn(3, 9, D)
    mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    assert attn(x, context).shape == (3, 4, D)
    assert attn(x, context, mask=mask).shape == (3, 4, D)


def test_block_and_mlp_shapes_and_gradients() -> None:
    block = Block(d_model=D, n_heads=H, d_ff=32, dropout=0.1, activation="relu")
    x = torch.randn(2, 5, D, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bad_arguments_name_the_fix() -> None:
    with pytest.raises(ValueError, match="not divisible by n_heads 3.*e.g. 1, 2, 4, 8, 16"):
        MultiHeadAttention(d_model=D, n_heads=3)
    with pytest.raises(ValueError, match="unknown activation 'swish'; choose one of: gelu, relu"):
        MLP(d_model=D, d_ff=32, activation="swish")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a bool tensor"):
        MultiHeadAttention(d_model=D, n_heads=H)(torch.randn(1, 3, D), mask=torch.ones(1, 1, 1, 3))


@pytest.mark.parametrize("positions", [LearnedPositions, SinusoidalPositions])
def test_positions_shape_and_max_len(positions: type[nn.Module]) -> None:
    pos = positions(max_len=8, d_model=D)
    x = torch.zeros(2, 8, D)
    y = pos(x)
    assert y.shape == x.shape
    assert not torch.allclose(y[:, 0], y[:, 1])  # positions are told apart
    with pytest.raises(ValueError, match="sequence length 9 exceeds max_len 8"):
        pos(torch.zeros(2, 9, D))


def test_sinusoidal_positions_odd_width_and_not_in_state_dict() -> None:
    pos = SinusoidalPositions(max_len=4, d_model=7)
    assert pos(torch.zeros(1, 4, 7)).shape == (1, 4, 7)
    assert pos.state_dict() == {}


def test_precomputed_context_keys_and_values_equal_the_context() -> None:
    attn = MultiHeadAttention(d_model=D, n_heads=H).eval()
    x, context = torch.randn(2, 3, D), torch.randn(2, 7, D)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 4:] = False
    torch.testing.assert_close(attn(x, context_kv=attn.context_kv(context), mask=mask), attn(x, context, mask=mask))


def test_kv_cache_reorder_keeps_and_repeats_rows() -> None:
    cache = KVCache(max_len=4)
    cache.reorder(torch.tensor([0]))  # nothing cached yet: nothing to do
    k, v = torch.randn(3, H, 2, 5), torch.randn(3, H, 2, 5)
    cache.append(k, v)
    cache.reorder(torch.tensor([2, 2, 0]))
    k2, v2 = cache.append(torch.zeros(3, H, 1, 5), torch.zeros(3, H, 1, 5))
    assert torch.equal(k2[:, :, :2], k[[2, 2, 0]]) and torch.equal(v2[:, :, :2], v[[2, 2, 0]])
    assert k2.shape == (3, H, 3, 5)


@pytest.mark.parametrize("block_type", [DecoderBlock, PostNormDecoderBlock])
def test_decoder_block_with_cache_equals_full_causal_pass(block_type: type[nn.Module]) -> None:
    block = block_type(d_model=D, n_heads=H, d_ff=32).eval()
    x, memory = torch.randn(2, 6, D), torch.randn(2, 5, D)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[0, ..., 3:] = False
    kv = block.memory_kv(memory)
    full = block(x, kv, memory_mask=mask)
    cache = KVCache(max_len=6)
    steps = [block(x[:, t : t + 1], kv, memory_mask=mask, cache=cache) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    x2 = x.clone()
    x2[:, 4] = torch.randn(2, D)
    torch.testing.assert_close(block(x2, kv, memory_mask=mask)[:, :4], full[:, :4], atol=1e-5, rtol=0)  # causal


def test_post_norm_block_normalises_its_output_with_the_same_weights() -> None:
    pre, post = Block(d_model=D, n_heads=H, d_ff=32), PostNormBlock(d_model=D, n_heads=H, d_ff=32)
    post.load_state_dict(pre.state_dict())  # one set of parameter names: the norm is a choice of forward only
    y = post(torch.randn(2, 5, D) * 10)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
