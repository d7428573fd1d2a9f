"""Post-training quantisation (attnlab.serving.quantize) on a tiny HF GPT-2 and a tiny attnlab GPT: Conv1D -> Linear
is exact, int8 really stores int8 Linears (all, or the MLP's only), the tied output layer stays float and tied, logits
stay close, greedy decoding still runs, and the methods that cannot run here say why."""

import sys

import pytest
import torch
from torch import nn

from attnlab.models.gpt import GPT
from attnlab.models.hf import HFCausalLM
from attnlab.serving.quantize import METHODS, conv1d_to_linear, count_int8, linear_names, quantize, size_mb

V, MAX_LEN = 50, 16
# Largest |int8 logit - fp32 logit| measured: 0.0042 (HF) and 0.0050 (GPT) over three inputs, logits of std 0.12.
INT8_ATOL = 0.02


def hf() -> HFCausalLM:
    torch.manual_seed(0)
    return HFCausalLM(vocab_size=V, max_len=MAX_LEN, n_layer=2, n_embd=32, n_head=2).eval()


def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=V, max_len=MAX_LEN, d_model=32, n_layers=2, n_heads=2).eval()


def tokens(B: int = 3, T: int = 12) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))


def dynamic_int8_names(model: nn.Module) -> list[str]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return [name for name, m in model.named_modules() if isinstance(m, DynamicLinear)]


def conv1d_count(model: nn.Module) -> int:
    from transformers.pytorch_utils import Conv1D

    return sum(isinstance(m, Conv1D) for m in model.modules())


def test_conv1d_to_linear_is_exact_and_keeps_the_tie():
    model, x = hf(), tokens()
    with torch.no_grad():
        before = model(x)
        assert conv1d_to_linear(model) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of 2 blocks
        assert conv1d_count(model) == 0 and conv1d_to_linear(model) == 0
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)
    assert model.model.lm_head.weight is model.model.transformer.wte.weight
    assert conv1d_to_linear(gpt()) == 0  # no transformers layers: nothing to do


@pytest.mark.parametrize("build, n_linears", [(hf, 8), (gpt, 10)])  # GPT: q, kv, out, fc1, fc2 per block
def test_int8_dynamic_stores_int8_linears_and_stays_close(build, n_linears):
    model, x = build(), tokens()
    with torch.no_grad():
        ref = model(x)
    fp32_mb = size_mb(model)
    quantize(model, "int8_dynamic")
    assert count_int8(model) == n_linears == len(dynamic_int8_names(model))
    assert count_int8(build()) == 0
    head = model.output_layer()
    assert isinstance(head, nn.Linear) and head.weight.dtype == torch.float32  # the tied head stays float and tied
    assert head.weight is next(m.weight for m in model.modules() if isinstance(m, nn.Embedding))
    if isinstance(model, HFCausalLM):
        assert conv1d_count(model) == 0
    with torch.no_grad():
        out = model(x)
    assert (out - ref).abs().max() < INT8_ATOL
    assert size_mb(model) < fp32_mb
    greedy = model.generate(x[:1, :4], 6, temperature=0)
    assert greedy.shape == (1, 10)


def test_quantised_attnlab_gpt_decodes_the_same_with_and_without_cache():
    model = quantize(gpt(), "int8_dynamic")  # its attention calls the int8 projections instead of fusing their weights
    prompt = tokens(1, 4)
    assert torch.equal(model.generate(prompt, 8, temperature=0, use_cache=True),
                       model.generate(prompt, 8, temperature=0, use_cache=False))


@pytest.mark.parametrize("build", [hf, gpt])
def test_int8_selective_quantises_the_mlp_only_or_the_named_modules(build):
    model = quantize(build(), "int8_selective")
    names = dynamic_int8_names(model)
    assert len(names) == count_int8(model) == 4 and all(".mlp." in name for name in names)
    assert all(".mlp." not in name for name in linear_names(model))  # attention stays float
    block0 = "h.0" if build is hf else "blocks.0"
    names = dynamic_int8_names(quantize(build(), "int8_selective", modules=[block0]))
    assert len(names) == (4 if build is hf else 5) and all(f"{block0}." in name for name in names)


def test_bf16_halves_the_size():
    model = hf()
    fp32_mb = size_mb(model)
    quantize(model, "bf16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert size_mb(model) == pytest.approx(fp32_mb / 2, rel=0.1)
    assert model.generate(tokens(1, 4), 4, temperature=0).shape == (1, 8)


def test_size_counts_a_tied_head_once():
    model = hf()
    tied = size_mb(model)
    head = model.model.lm_head
    head.weight = nn.Parameter(head.weight.detach().clone())  # untied: the same numbers stored twice
    assert size_mb(model) - tied == pytest.approx(head.weight.numel() * 4 / 1e6, rel=0.1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="bitsandbytes runs where there is a CUDA GPU")
@pytest.mark.parametrize("method", ["bnb_int8", "bnb_nf4"])
def test_bitsandbytes_without_a_gpu_says_so(method):
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU \(bitsandbytes\); this machine has none"):
        quantize(hf(), method)
    assert "bitsandbytes" not in sys.modules


def test_bad_methods_and_modules_are_refused():
    with pytest.raises(ValueError, match="unknown quantisation method 'int4'; choose one of: " + ", ".join(METHODS)):
        quantize(hf(), "int4")
    with pytest.raises(ValueError, match="modules= picks the Linears of the int8 methods"):
        quantize(hf(), "fp32", modules=["mlp.*"])
    with pytest.raises(ValueError, match="no Linear of GPT matches modules=.'attention'."):
        quantize(gpt(), "int8_selective", modules=["attention"])


@pytest.mark.parametrize("build", [hf, gpt])
def test_int8_all_stores_the_tied_embedding_int8_once_and_stays_close(build):
    from attnlab.serving.quantize import Int8Embedding, Int8TiedHead

    model, x = build(), tokens()
    with torch.no_grad():
        ref = model(x)
    dynamic = quantize(build(), "int8_dynamic")
    quantize(model, "int8_all")
    embeddings = [m for m in model.modules() if isinstance(m, Int8Embedding)]
    heads = [m for m in model.modules() if isinstance(m, Int8TiedHead)]
    assert embeddings and all(m.qweight.dtype == torch.int8 for m in embeddings)
    assert len(heads) == 1 and any(heads[0].embedding is m for m in embeddings)  # still tied: one int8 table
    assert not any(isinstance(m, nn.Embedding) for m in model.modules())
    assert count_int8(model) == count_int8(dynamic) + len(embeddings)
    # The saved model holds the table once: smaller than int8_dynamic by most of the float table's 4 bytes a weight.
    table = next(m for m in embeddings if m.qweight.shape[0] == V).qweight.numel()
    assert size_mb(model) < size_mb(dynamic) - 2.5 * table / 1e6
    with torch.no_grad():
        assert (model(x) - ref).abs().max() < INT8_ATOL
    assert model.generate(x[:1, :4], 6, temperature=0).shape == (1, 10)
