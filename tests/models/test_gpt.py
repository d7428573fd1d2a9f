"""GPT decoder: shapes, causality, KV-cache parity with full recomputation, sampling, tying, init, named sizes."""

import io
import math

import pytest
import torch

from attnlab.models import gpt as gpt_module
from attnlab.models.gpt import GPT, gpt_micro, gpt_mini, gpt_nano, gpt_small
from attnlab.models.layers import KVCache, MultiHeadAttention, RotaryPositions, apply_rotary

V, D, L, H, MAX_LEN = 50, 32, 2, 4, 16
VARIANTS = [("learned", "gelu"), ("learned", "swiglu"), ("rotary", "gelu"), ("rotary", "swiglu")]
IDS = [f"{p}-{a}" for p, a in VARIANTS]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread; on a busy machine a second thread mostly waits for its peer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(positions: str = "learned", activation: str = "gelu", **kw) -> GPT:
    """A 2-layer, 32-wide GPT over 50 tokens, seeded."""
    torch.manual_seed(0)
    kw = {"d_model": D, "n_layers": L, "n_heads": H, "max_len": MAX_LEN, **kw}
    return GPT(vocab_size=V, positions=positions, activation=activation, **kw)


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("positions,activation", VARIANTS, ids=IDS)
def test_shapes_and_gradients_reach_every_parameter(positions: str, activation: str) -> None:
    model = tiny(positions, activation, dropout=0.1)
    logits = model(tokens(3, 10))
    assert logits.shape == (3, 10, V) and logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), tokens(3, 10, seed=2).reshape(-1)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("positions,activation", VARIANTS, ids=IDS)
def test_changing_a_token_never_changes_earlier_logits(positions: str, activation: str) -> None:
    model = tiny(positions, activation).eval()
    x = tokens(2, 9)
    y = model(x)
    for t in range(9):
        x2 = x.clone()
        x2[:, t] = (x2[:, t] + 1) % V
        y2 = model(x2)
        torch.testing.assert_close(y[:, :t], y2[:, :t], atol=1e-5, rtol=0)
        assert not torch.allclose(y[:, t], y2[:, t])  # ...while the changed position itself does see it


@pytest.mark.parametrize("positions,activation", VARIANTS, ids=IDS)
def test_cached_logits_equal_full_forward(positions: str, activation: str) -> None:
    model = tiny(positions, activation).eval()
    x = tokens(2, 12)
    full = model(x)  # (B, T, V)
    cache = model.new_cache()
    # A 5-token prefill, one 3-token chunk (needs the offset causal mask), then one token at a time.
    pieces = [model(x[:, :5], cache=cache), model(x[:, 5:8], cache=cache)]
    pieces += [model(x[:, t : t + 1], cache=cache) for t in range(8, 12)]
    assert cache[0].length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions,activation", VARIANTS, ids=IDS)
def test_cached_generation_equals_recomputation(positions: str, activation: str) -> None:
    model = tiny(positions, activation)
    prompt = tokens(3, 4)
    greedy = model.generate(prompt, 10, temperature=0, use_cache=True)
    assert greedy.shape == (3, 14) and torch.equal(greedy[:, :4], prompt)
    assert torch.equal(greedy, model.generate(prompt, 10, temperature=0, use_cache=False))
    kw = {"temperature": 1.5, "top_k": 20, "top_p": 0.95}
    sampled = model.generate(prompt, 10, use_cache=True, generator=torch.Generator().manual_seed(7), **kw)
    again = model.generate(prompt, 10, use_cache=False, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(sampled, again)
    assert not torch.equal(sampled, greedy)  # the sampling really sampled


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_generation_past_max_len_falls_back_to_the_cropped_window(positions: str) -> None:
    model = tiny(positions, max_len=8)
    prompt = tokens(2, 3)
    cached = model.generate(prompt, 12, temperature=0, use_cache=True)
    assert cached.shape == (2, 15)
    assert torch.equal(cached, model.generate(prompt, 12, temperature=0, use_cache=False))


def test_sampling_uses_only_the_given_generator() -> None:
    model = tiny("rotary")
    prompt = tokens(2, 3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = model.generate(prompt, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not drawn from
    torch.manual_seed(456)
    b = model.generate(prompt, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_top_k_one_and_tiny_top_p_equal_greedy() -> None:
    model = tiny()
    prompt = tokens(3, 4)
    greedy = model.generate(prompt, 8, temperature=0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(prompt, 8, temperature=2.0, top_k=1, generator=g), greedy)
    assert torch.equal(model.generate(prompt, 8, temperature=2.0, top_p=1e-6, generator=g), greedy)


def test_generate_restores_the_training_mode() -> None:
    model = tiny(dropout=0.5)
    model.train()
    first = model.generate(tokens(1, 3), 5, temperature=0)
    assert model.training
    assert torch.equal(first, model.generate(tokens(1, 3), 5, temperature=0))  # dropout was off while decoding
    model.eval()
    model.generate(tokens(1, 3), 2)
    assert not model.training


def test_eos_rows_keep_eos_and_decoding_stops_when_all_finished() -> None:
    model = tiny()
    prompt = tokens(2, 3)
    free = model.generate(prompt, 8, temperature=0)
    eos = int(free[0, 3])  # row 0's first new token
    assert eos not in free[1, 3:].tolist(), "pick prompts where row 1 never produces row 0's first token"
    stopped = model.generate(prompt, 8, temperature=0, eos_id=eos)
    assert (stopped[0, 3:] == eos).all()  # row 0 finished at once and pads with eos
    assert torch.equal(stopped[1], free[1])  # row 1 is unaffected and runs the full length
    with torch.no_grad():  # a model whose logits are all zero: greedy picks token 0 everywhere
        model.ln_f.weight.zero_()
        model.ln_f.bias.zero_()
    assert model.generate(prompt, 8, temperature=0, eos_id=0).shape == (2, 4)  # every row done after one step


def test_too_long_input_raises_a_clear_error() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="sequence length 17 exceeds max_len 16; crop the input"):
        model(tokens(1, MAX_LEN + 1))
    cache = model.new_cache()
    model(tokens(1, 10), cache=cache)
    with pytest.raises(ValueError, match="sequence length 7 after 10 cached positions exceeds max_len 16"):
        model(tokens(1, 7), cache=cache)


def test_bad_arguments_name_the_fix() -> None:
    with pytest.raises(ValueError, match="unknown positions 'alibi'; choose one of: learned, rotary"):
        tiny("alibi")
    with pytest.raises(ValueError, match="unknown activation 'geglu'; choose one of: gelu, relu, swiglu"):
        tiny(activation="geglu")
    with pytest.raises(ValueError, match="top_p must be in"):
        tiny().generate(tokens(1, 2), 1, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        tiny().generate(tokens(1, 2), 1, temperature=-1.0)


def test_tied_weights_survive_a_weights_only_checkpoint() -> None:
    model = tiny("rotary", "swiglu").eval()
    assert model.lm_head.weight is model.tok_embed.weight
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(99)
    restored = GPT(vocab_size=V, max_len=MAX_LEN, d_model=D, n_layers=L, n_heads=H, positions="rotary",
                   activation="swiglu").eval()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.lm_head.weight.data_ptr() == restored.tok_embed.weight.data_ptr()
    x = tokens(2, 8)
    torch.testing.assert_close(restored(x), model(x), atol=0, rtol=0)
    untied = tiny(tie_weights=False)
    assert untied.lm_head.weight.data_ptr() != untied.tok_embed.weight.data_ptr()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tiny()) == V * D


def test_gpt2_initialisation() -> None:
    torch.manual_seed(0)
    model = GPT(vocab_size=500, max_len=64, d_model=128, n_layers=8, n_heads=4, activation="swiglu")
    residual = 0.02 / math.sqrt(2 * 8)
    for name, p in model.named_parameters():
        if name.endswith(("attn.out_proj.weight", "mlp.fc2.weight")):
            assert p.std().item() == pytest.approx(residual, rel=0.1), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        elif name.startswith(("blocks.", "ln_f")) and "ln" in name:
            assert torch.all(p == 1), name  # LayerNorm gains
        else:
            assert p.std().item() == pytest.approx(0.02, rel=0.1), name
            assert p.mean().abs().item() < 0.002, name


def test_no_bias_anywhere_when_bias_false() -> None:
    model = tiny(bias=False)
    assert not [name for name, _ in model.named_parameters() if name.endswith("bias")]
    assert model(tokens(1, 4)).shape == (1, 4, V)


def test_swiglu_default_width_matches_the_mlp_parameter_count() -> None:
    gelu, swiglu = tiny(activation="gelu"), tiny(activation="swiglu")
    assert swiglu.blocks[0].mlp.fc2.in_features == 96  # 8/3 * 32, rounded up to a multiple of 32
    count = lambda m: sum(p.numel() for p in m.mlp.parameters())  # noqa: E731
    assert abs(count(swiglu.blocks[0]) / count(gelu.blocks[0]) - 1) < 0.15


@pytest.mark.parametrize(
    "builder,expected", [(gpt_nano, 1_350_400), (gpt_micro, 3_505_152), (gpt_mini, 5_853_184), (gpt_small, 88_398_336)],
    ids=["nano", "micro", "mini", "small"],
)
def test_named_sizes_and_their_parameter_counts(builder, expected: int) -> None:
    model = builder(vocab_size=4096, max_len=256)
    D_, n = model.tok_embed.embedding_dim, len(model.blocks)
    # tied embedding + learned positions + per block 12 D^2 + 13 D (attention, MLP, two LayerNorms) + final LayerNorm
    assert sum(p.numel() for p in model.parameters()) == 4096 * D_ + 256 * D_ + n * (12 * D_**2 + 13 * D_) + 2 * D_
    assert sum(p.numel() for p in model.parameters()) == expected  # the counts documented in gpt.py
    assert f"{expected / 1e6:.2f}M" in gpt_module.__doc__
    short = builder(vocab_size=4096, max_len=8, n_layers=1)
    assert short.generate(torch.zeros(1, 1, dtype=torch.long), 3).shape == (1, 4)


def test_rotary_scores_depend_only_on_relative_position() -> None:
    rotary = RotaryPositions(max_len=32, head_dim=8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> torch.Tensor:
        cos, sin = rotary(32)
        return (apply_rotary(q, cos[m : m + 1], sin[m : m + 1]) * apply_rotary(k, cos[n : n + 1], sin[n : n + 1])).sum()

    torch.testing.assert_close(score(5, 2), score(20, 17), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 4))
    torch.testing.assert_close(apply_rotary(q, *rotary(1)), q)  # position 0 is no rotation


def test_attention_cache_appends_and_refuses_overflow() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=D, n_heads=H).eval()
    x = torch.randn(2, 6, D)
    cache = KVCache(max_len=6)
    steps = [attn(x[:, :4], is_causal=True, cache=cache), attn(x[:, 4:5], is_causal=True, cache=cache),
             attn(x[:, 5:6], is_causal=True, cache=cache)]
    torch.testing.assert_close(torch.cat(steps, dim=1), attn(x, is_causal=True), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="KV cache holds at most max_len 6 positions, got 6 cached \\+ 1 new"):
        attn(x[:, :1], is_causal=True, cache=cache)


class _CharTokenizer:
    """Characters a..x are ids 1..24, id 0 is end-of-text: enough to drive sample_text."""

    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return [1 + (ord(c) - ord("a")) % 24 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("a") + i - 1) for i in ids if i > 0)


def test_sample_text_continues_each_prompt_after_an_end_of_text_reproducibly() -> None:
    from attnlab.models.sampling import sample_text

    model, tok = tiny(), _CharTokenizer()
    texts = sample_text(model, tok, ["abc", "hello"], 6, seed=3, top_k=10)
    assert texts == sample_text(model, tok, ["abc", "hello"], 6, seed=3, top_k=10)  # a private seeded generator
    assert texts[0].startswith("abc") and texts[1].startswith("hello")
    greedy = model.generate(torch.tensor([[0, *tok.encode("abc")]]), 6, temperature=0, eos_id=0)
    assert sample_text(model, tok, ["abc"], 6, temperature=0) == ["abc" + tok.decode(greedy[0, 4:].tolist())]
    with pytest.raises(ValueError, match="has no generate"):
        sample_text(torch.nn.Linear(2, 2), tok, ["abc"], 3)
