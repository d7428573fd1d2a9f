"""Post-training quantisation of a trained model for inference: smaller weights, faster CPU generation, a little
perplexity lost. `scripts/quantize.py` measures all three on a run.

Methods (METHODS):
    fp32            unchanged: the reference
    bf16            every tensor in bfloat16 (half the size; fast only where the CPU has bf16 instructions)
    int8_dynamic    torch's dynamic quantisation: nn.Linear weights stored int8 (per tensor), activations quantised
                    on the fly at every call; CPU only
    int8_all        int8_dynamic, and the token embedding too: stored int8 with one scale per row (weight-only,
                    symmetric), still tied to the output layer, which multiplies by the dequantised table at every
                    call. With GPT-2's 50,257-token vocabulary the embedding is most of a small model: only this method
                    shrinks it
    int8_selective  int8_dynamic on the MLP Linears only (`mlp.*`: GPT-2's mlp.c_fc / mlp.c_proj, attnlab GPT's
                    mlp.fc1 / mlp.fc2), which hold two thirds of a block's weights; attention stays float
    bnb_int8, bnb_nf4  bitsandbytes' LLM.int8() / 4-bit NormalFloat through transformers; a CUDA GPU only

torchao's int8 weight-only quantisation (Int8WeightOnlyConfig, torchao 0.18) is left out: at GPT-2 small's block
shape on torch 2.13, one thread of an AVX2 AMD EPYC, it generated 8.0 tokens/s against fp32's 17.8 and int8_dynamic's
29.7, for the same size as int8_dynamic (99 against 354 MB).

`modules` (int8 methods) names the Linears to quantise instead of the default: each pattern is a glob matched
against whole runs of the dotted module name, so "mlp.*" takes every MLP Linear, "h.0" (GPT-2) or "blocks.0"
(attnlab GPT) one block's, "model.transformer.h.3.attn.c_attn" one layer.

The tied output layer stays float. GPT-2 and attnlab's GPT read tokens in and score them out with one matrix
(lm_head.weight is the token embedding). Quantising lm_head would untie it: the float embedding stays (the input
side needs it) and an int8 copy joins it, so the saved model grows by a quarter of the embedding, and the rounding
error lands on the logits directly. A Linear whose weight an nn.Embedding also holds is therefore never quantised;
an untied output layer is quantised like any other Linear.

torch.ao's eager quantisation (quantize_dynamic) is deprecated in favour of torchao, yet it is the one int8 path
built into torch, runs on torch 2.13 and was the fastest here; its deprecation warnings are silenced.
"""

from __future__ import annotations

import fnmatch
import io
import sys
import tempfile
import warnings
from collections.abc import Sequence

import torch
from torch import nn

METHODS = ("fp32", "bf16", "int8_dynamic", "int8_all", "int8_selective", "bnb_int8", "bnb_nf4")
MLP_PATTERNS = ("mlp.*",)  # int8_selective's default
_INT8 = ("int8_dynamic", "int8_all", "int8_selective")
_BNB = ("bnb_int8", "bnb_nf4")


def check_method(method: str) -> None:
    """Raise if `method` is unknown (ValueError) or cannot run on this machine (RuntimeError); imports nothing heavy."""
    if method not in METHODS:
        raise ValueError(f"unknown quantisation method {method!r}; choose one of: {', '.join(METHODS)}")
    if method in _BNB and not torch.cuda.is_available():
        raise RuntimeError(f"{method} needs a CUDA GPU (bitsandbytes); this machine has none: on a CPU use "
                           "int8_dynamic or int8_selective")


def quantize(model: nn.Module, method: str, *, modules: Sequence[str] | None = None) -> nn.Module:
    """Quantise `model` for inference in place (bnb_*: its transformers model is reloaded); returns it, in eval mode."""
    check_method(method)
    if modules is not None and method not in _INT8:
        raise ValueError(f"modules= picks the Linears of the int8 methods ({', '.join(_INT8)}), not of {method}")
    model.eval()
    if method == "fp32":
        return model
    if method == "bf16":
        return model.to(torch.bfloat16)
    if method in _BNB:
        return _bitsandbytes(model, method)
    conv1d_to_linear(model)
    patterns = modules if modules is not None else MLP_PATTERNS if method == "int8_selective" else None
    names = linear_names(model, patterns)
    if not names:
        raise ValueError(f"no Linear of {type(model).__name__} matches modules={list(patterns or [])}; module names "
                         f"look like {', '.join(n for n, m in model.named_modules() if isinstance(m, nn.Linear))[:200]}")
    model = _int8_dynamic(model, names)
    return int8_embeddings(model) if method == "int8_all" else model


class Int8Embedding(nn.Module):
    """An embedding table stored int8 with a float scale per row (row = scale * int8, |int8| <= 127): a quarter of
    the float size. `forward(ids)` looks rows up; `logits(x)` is the tied output layer, x @ table.T."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        scale = weight.detach().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0  # (V, 1)
        self.register_buffer("qweight", torch.round(weight.detach() / scale).to(torch.int8))  # (V, D)
        self.register_buffer("scale", scale.float())

    def table(self) -> torch.Tensor:
        return self.qweight.float() * self.scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.qweight[ids].float() * self.scale[ids]


class Int8TiedHead(nn.Module):
    """The output layer tied to an Int8Embedding: logits = x @ dequantised table.T (no bias, as GPT-2's lm_head)."""

    def __init__(self, embedding: Int8Embedding) -> None:
        super().__init__()
        self.embedding = embedding  # the same module: its int8 buffers are stored once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.embedding.table().T


def int8_embeddings(model: nn.Module) -> nn.Module:
    """Every nn.Embedding -> Int8Embedding; a Linear sharing its weight (the tied head) -> Int8TiedHead on it."""
    embeddings = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Embedding)]
    tied = {id(m.weight): name for name, m in embeddings}
    replaced: dict[str, Int8Embedding] = {}
    for name, emb in embeddings:
        replaced[name] = Int8Embedding(emb.weight)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replaced[name])
    heads = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and id(m.weight) in tied]
    for name, head in heads:
        if head.bias is not None:
            continue  # no tied head has one; leave anything unusual float
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, Int8TiedHead(replaced[tied[id(head.weight)]]))
    return model


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace every transformers Conv1D (GPT-2's c_attn, c_proj, c_fc) by the equivalent nn.Linear, in place;
    returns how many. Conv1D computes x @ W + b with W (in, out), a Linear x @ W.T + b: same numbers, W transposed.
    Quantisation recognises nn.Linear only and would leave a Conv1D float without a word."""
    utils = sys.modules.get("transformers.pytorch_utils")  # a model holding a Conv1D has imported it already
    if utils is None:
        return 0
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, utils.Conv1D)]
    for name, conv in found:
        nx, nf = conv.weight.shape  # (in, out)
        linear = nn.Linear(nx, nf, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.T)  # (out, in)
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, linear)
    return len(found)


def linear_names(model: nn.Module, patterns: Sequence[str] | None = None) -> list[str]:
    """The dotted names of the Linears to quantise: all, or those matching a pattern; never a tied output layer."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and id(m.weight) not in embedded
            and (patterns is None or any(_matches(name, p) for p in patterns))]


def _matches(name: str, pattern: str) -> bool:
    """Whether a glob matches a whole run of name's dotted parts: 'mlp.*' matches 'h.0.mlp.c_fc', not 'h.0.mlpx'."""
    return any(fnmatch.fnmatchcase(name, p) for p in (pattern, f"*.{pattern}", f"{pattern}.*", f"*.{pattern}.*"))


def _int8_dynamic(model: nn.Module, names: list[str]) -> nn.Module:
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(torch\.ao\.quantization is deprecated|quantize_per_tensor).*")
        return quantize_dynamic(model, {name: default_dynamic_qconfig for name in names}, dtype=torch.qint8, inplace=True)


def _bitsandbytes(model: nn.Module, method: str) -> nn.Module:
    """Reload a transformers model (HFCausalLM's `.model`) with a BitsAndBytesConfig: the weights are quantised as
    they are loaded onto the GPU, the way transformers documents it (it handles GPT-2's Conv1D itself)."""
    inner = getattr(model, "model", None)
    if not hasattr(inner, "save_pretrained"):
        raise ValueError(f"{method} quantises a transformers model (an HFCausalLM run); {type(model).__name__} is not "
                         "one: use int8_dynamic or int8_selective")
    import transformers

    if method == "bnb_int8":
        config = transformers.BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                 bnb_4bit_compute_dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory() as folder:
        inner.save_pretrained(folder)
        model.model = transformers.AutoModelForCausalLM.from_pretrained(folder, quantization_config=config,
                                                                        device_map={"": torch.cuda.current_device()})
    return model.eval()


def size_mb(model: nn.Module) -> float:
    """The model's saved size in MB: the bytes of torch.save(state_dict) (shared tensors, a tied head, count once)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


def count_int8(model: nn.Module) -> int:
    """How many layers hold quantised weights: torch's dynamic int8 Linears, Int8Embeddings, or bitsandbytes' (int8,
    or 4-bit packed into uint8); a float model has 0."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    count = 0
    for m in model.modules():
        if isinstance(m, (DynamicLinear, Int8Embedding)):
            count += 1
        elif isinstance(m, nn.Linear):
            count += m.weight.dtype in (torch.int8, torch.uint8)
    return count
