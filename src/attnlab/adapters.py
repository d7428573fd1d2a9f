"""Parameter-efficient fine-tuning of Hugging Face causal LMs through the `peft` library: the `peft` config group.

One switch, `peft=<method>`, picks how a pretrained model is adapted: `none` (full fine-tuning, optionally only the
top k blocks), `lora`, `prompt_tuning`, `prefix_tuning`, `ia3`. Each option is a small dataclass whose `apply` is called
at the model-transform step (`build.transform_model`), after the base weights are in and before training, validation,
generation or serving see the model, so every consumer sees the same adapted model. Nothing here reimplements an
adapter: the dataclasses only translate attnlab's config into peft's configs (GPT-2-aware defaults: its attention and
MLP projections are `transformers.Conv1D` layers, whose weight is stored (in, out), hence `fan_in_fan_out`).

peft wraps the HF model; its state_dict keys change (`base_model.model.transformer...`), and a run's checkpoints hold
only the trainable tensors (see `trainable_state`), so `runs.load_model` rebuilds the base, applies the same adapter,
then loads them. `save_adapter` writes peft's own format (adapter_config.json + adapter_model.safetensors), which
`peft.PeftModel.from_pretrained` reads back anywhere.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("attnlab")

ADAPTER_DIR = "adapter"  # in a peft run's directory: the tested adapter in peft's format


def _hf_model(model: nn.Module) -> nn.Module:
    """The `transformers` model inside an attnlab wrapper (HFCausalLM keeps it as `.model`)."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "config") or not hasattr(inner, "get_input_embeddings"):
        raise ValueError(f"peft adapters apply to Hugging Face models (model=hf_causal_lm); {type(model).__name__} is "
                         "not one: use peft=none")
    return inner


def _check_targets(hf: nn.Module, targets: list[str] | None, what: str) -> None:
    """peft matches a target name against the end of each module's dotted name; refuse names that match nothing."""
    if not targets:
        return
    names = [name for name, _ in hf.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n})
        raise ValueError(f"peft.{what} {missing} match no module of {type(hf).__name__}; its module names end in: "
                         f"{', '.join(leaves[:40])}")


@dataclass(kw_only=True)
class Adapter:
    """The base of the peft options: `apply(wrapper)` adapts the HF model inside an attnlab model, in place."""

    method = "none"
    uses_peft = True

    def peft_config(self, hf: nn.Module) -> Any:
        raise NotImplementedError

    def apply(self, model: nn.Module) -> nn.Module:
        import peft

        hf = _hf_model(model)
        config = self.peft_config(hf)
        model.model = peft.get_peft_model(hf, config)
        self.after(model)
        return model

    def after(self, model: nn.Module) -> None:
        """Hook after wrapping (text initialisation of prompt tuning)."""


@dataclass(kw_only=True)
class FullFineTuning(Adapter):
    """`peft=none`: every weight trains; `top_blocks=k` trains only the last k transformer blocks and the final norm
    (embeddings and the tied output stay frozen), a cheap middle ground that needs no library."""

    top_blocks: int | None = None
    method = "none"
    uses_peft = False

    def apply(self, model: nn.Module) -> nn.Module:
        if self.top_blocks is None:
            return model
        hf = _hf_model(model)
        blocks = [name for name, m in hf.named_modules() if re.fullmatch(r".*\.h\.\d+", name)]
        if not 1 <= self.top_blocks <= len(blocks):
            raise ValueError(f"peft.top_blocks={self.top_blocks}: the model has {len(blocks)} blocks; choose 1..{len(blocks)}")
        keep = tuple(f"{name}." for name in blocks[-self.top_blocks:]) + tuple(
            f"{name}." for name, _ in hf.named_modules() if name.endswith("ln_f"))
        for name, p in hf.named_parameters():
            p.requires_grad_(name.startswith(keep))
        return model


@dataclass(kw_only=True)
class LoRA(Adapter):
    """Low-rank updates W + (alpha / r) B A on `target_modules` (peft.LoraConfig); B starts at zero, so the adapted
    model starts exactly as the base."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["c_attn", "c_proj"])
    fan_in_fan_out: bool = True
    bias: str = "none"
    method = "lora"

    def peft_config(self, hf: nn.Module) -> Any:
        import peft

        _check_targets(hf, self.target_modules, "target_modules")
        return peft.LoraConfig(task_type="CAUSAL_LM", r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                               target_modules=list(self.target_modules), fan_in_fan_out=self.fan_in_fan_out, bias=self.bias)


@dataclass(kw_only=True)
class IA3(Adapter):
    """Learned rescaling vectors on keys/values and the MLP's input (peft.IA3Config); they start at one."""

    target_modules: list[str] = field(default_factory=lambda: ["c_attn", "mlp.c_proj"])
    feedforward_modules: list[str] = field(default_factory=lambda: ["mlp.c_proj"])
    fan_in_fan_out: bool = True
    method = "ia3"

    def peft_config(self, hf: nn.Module) -> Any:
        import peft

        _check_targets(hf, self.target_modules, "target_modules")
        missing = [m for m in self.feedforward_modules if m not in self.target_modules]
        if missing:
            raise ValueError(f"peft.feedforward_modules {missing} must also be in peft.target_modules")
        return peft.IA3Config(task_type="CAUSAL_LM", target_modules=list(self.target_modules),
                              feedforward_modules=list(self.feedforward_modules), fan_in_fan_out=self.fan_in_fan_out)


@dataclass(kw_only=True)
class PromptTuning(Adapter):
    """`num_virtual_tokens` trained input embeddings before every input (peft.PromptTuningConfig). `init_text`:
    start them from the embeddings of that text's tokens (repeated to fill), else random; the text is tokenized
    with the run's own tokenizer (`tokenizer`, passed by build), so no hub tokenizer is needed."""

    num_virtual_tokens: int = 20
    init_text: str | None = None
    method = "prompt_tuning"

    def peft_config(self, hf: nn.Module) -> Any:
        import peft

        return peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens)

    def init_from_text(self, model: nn.Module, tokenizer: Any) -> None:
        import torch

        if not self.init_text:
            return
        ids = tokenizer.encode(self.init_text)
        if not ids:
            raise ValueError(f"peft.init_text={self.init_text!r} has no tokens")
        ids = (ids * (self.num_virtual_tokens // len(ids) + 1))[: self.num_virtual_tokens]
        wrapped = model.model
        table = wrapped.get_input_embeddings().weight
        with torch.no_grad():
            wrapped.prompt_encoder[wrapped.active_adapter].embedding.weight.copy_(table[torch.tensor(ids)])


@dataclass(kw_only=True)
class PrefixTuning(Adapter):
    """Trained key/value prefixes of `num_virtual_tokens` positions in every layer (peft.PrefixTuningConfig);
    `prefix_projection`: reparametrise them through an MLP of `encoder_hidden_size` (the paper's stabiliser)."""

    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None
    method = "prefix_tuning"

    def peft_config(self, hf: nn.Module) -> Any:
        import peft

        extra = {"encoder_hidden_size": self.encoder_hidden_size} if self.encoder_hidden_size else {}
        return peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens,
                                       prefix_projection=self.prefix_projection, **extra)


# -- counting, saving, loading ----------------------------------------------------------------------------------------
def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """{trainable_params, total_params, trainable_share} of a (possibly adapted) model."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total, "trainable_share": trainable / max(total, 1)}


def is_peft(model: nn.Module) -> bool:
    """Whether the model inside an attnlab wrapper is a peft model."""
    inner = getattr(model, "model", None)
    return inner is not None and hasattr(inner, "peft_config") and hasattr(inner, "save_pretrained")


def trainable_state(module: nn.Module, state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The entries of a state_dict that belong to trainable parameters (an adapter's); frozen base weights are left
    out of checkpoints, since the base they come from is named in the config."""
    keep = {prefix + name for name, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in keep}


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """peft's own format in `directory`: adapter_config.json + adapter_model.safetensors (no base weights)."""
    directory = Path(directory)
    model.model.save_pretrained(directory)
    return directory


def merged(model: nn.Module) -> nn.Module:
    """The plain HF model with the adapter folded into its weights (LoRA, IA3); a copy, the adapted model stays."""
    import copy

    if not is_peft(model):
        return model.model
    if model.model.active_peft_config.is_prompt_learning:
        raise ValueError("prompt and prefix tuning add inputs, not weight updates: they cannot be merged into the "
                         "model; load the run's adapter/ folder with peft.PeftModel.from_pretrained instead")
    return copy.deepcopy(model.model).merge_and_unload()
