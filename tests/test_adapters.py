"""peft adapters on a tiny GPT-2 (transformers, built from scratch): the invariants each method must keep, and the
errors for configs that cannot work."""

import peft
import pytest
import torch
from omegaconf import OmegaConf

from attnlab import adapters, build
from attnlab.errors import ConfigError
from attnlab.models.hf import HFCausalLM

X = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])


def tiny(seed: int = 0) -> HFCausalLM:
    torch.manual_seed(seed)
    return HFCausalLM(vocab_size=40, max_len=32, n_layer=2, n_embd=16, n_head=2, dropout=0.0).eval()


def perturb(model: torch.nn.Module, names: str) -> None:
    """Move the adapter's tensors away from their identity start, so it changes the outputs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if names in name:
                p.add_(0.5 * torch.randn_like(p))


# Trainable tensors per block of the tiny GPT-2 (width 16, MLP 64): LoRA r=8 adds r * (in + out) on c_attn (16 -> 48),
# attn.c_proj (16 -> 16) and mlp.c_proj (64 -> 16); IA3 scales c_attn's 48 outputs and mlp.c_proj's 64 inputs.
@pytest.mark.parametrize("adapter, per_block", [(adapters.LoRA(), 8 * (64 + 32 + 80)), (adapters.IA3(), 48 + 64)],
                         ids=["lora", "ia3"])
def test_lora_and_ia3_start_as_the_base_model_exactly(adapter, per_block):
    model = tiny()
    base = model(X)
    adapter.apply(model)
    assert torch.equal(model.eval()(X), base)
    assert adapters.parameter_counts(model)["trainable_params"] == 2 * per_block
    assert all("lora_" in n or "ia3_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_a_saved_adapter_reloads_onto_a_fresh_base_with_identical_outputs(tmp_path):
    model = adapters.LoRA(r=4).apply(tiny())
    perturb(model, "lora_B")
    out = model.eval()(X)
    adapters.save_adapter(model, tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    fresh = tiny()  # the same base weights (seed 0)
    fresh.model = peft.PeftModel.from_pretrained(fresh.model, tmp_path / "adapter")
    assert torch.equal(fresh.eval()(X), out)
    assert not torch.equal(tiny()(X), out)  # the adapter does change the outputs


@pytest.mark.parametrize("adapter, names", [(adapters.LoRA(r=4), "lora_B"), (adapters.IA3(), "ia3_")], ids=["lora", "ia3"])
def test_merged_equals_unmerged(adapter, names):
    model = adapter.apply(tiny())
    perturb(model, names)
    merged = adapters.merged(model)
    assert not isinstance(merged, peft.PeftModel)
    out = model.eval()(X)
    assert (merged.eval()(input_ids=X).logits - out).abs().max() < 1e-5
    assert adapters.is_peft(model)  # merging works on a copy


@pytest.mark.parametrize("adapter", [adapters.PromptTuning(num_virtual_tokens=3), adapters.PrefixTuning(num_virtual_tokens=3)],
                         ids=["prompt", "prefix"])
def test_prompt_and_prefix_tuning_generate_and_batching_changes_nothing(adapter):
    """peft's prompt learning on GPT-2 with HF generate: the virtual tokens take part, and a left-padded batch gives
    each row what it gives alone (the attention mask covers the virtual positions)."""
    model = adapter.apply(tiny())
    perturb(model, "prompt_encoder")
    prompts = [[5, 6, 7, 8], [9, 10]]
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = ids != 0
    batched = model.hf_generate(ids, mask, max_new_tokens=6, eos_id=39, pad_id=0)
    alone = [model.hf_generate(torch.tensor([p]), torch.ones(1, len(p), dtype=torch.bool), max_new_tokens=6, eos_id=39,
                               pad_id=0)[0] for p in prompts]
    assert batched == alone and all(len(r) == 6 for r in batched)
    plain = tiny().hf_generate(ids, mask, max_new_tokens=6, eos_id=39, pad_id=0)
    assert plain != batched  # the trained prompt steers generation
    assert model(ids).shape == (2, 4, 40)  # logits line up with the input, virtual positions dropped


def test_prompt_tuning_starts_from_the_init_texts_embeddings():
    class Tok:
        def encode(self, text):
            return [3, 4]

    model = tiny()
    table = model.model.get_input_embeddings().weight.detach().clone()
    adapter = adapters.PromptTuning(num_virtual_tokens=5, init_text="tl dr")
    adapter.apply(model)
    adapter.init_from_text(model, Tok())
    weight = model.model.prompt_encoder["default"].embedding.weight
    assert torch.equal(weight, table[[3, 4, 3, 4, 3]])


def test_top_blocks_trains_only_the_last_blocks():
    model = adapters.FullFineTuning(top_blocks=1).apply(tiny())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.transformer.h.1.", "model.transformer.ln_f.")) for n in trainable)
    with pytest.raises(ValueError, match="the model has 2 blocks"):
        adapters.FullFineTuning(top_blocks=3).apply(tiny())


def _cfg(peft_node):
    return OmegaConf.create({"peft": peft_node, "compile": False})


def test_target_modules_that_match_nothing_are_a_config_error():
    node = {"_target_": "attnlab.adapters.LoRA", "target_modules": ["q_proj"]}
    with pytest.raises(ConfigError, match=r"\['q_proj'\] match no module of GPT2LMHeadModel.*c_attn"):
        build.transform_model(tiny(), _cfg(node))


def test_peft_on_a_model_that_is_not_a_hf_model_is_a_config_error():
    node = {"_target_": "attnlab.adapters.LoRA"}
    with pytest.raises(ConfigError, match="apply to Hugging Face models"):
        build.transform_model(torch.nn.Linear(2, 2), _cfg(node))


def test_a_base_that_is_no_causal_lm_or_is_missing_is_a_clear_error(tmp_path):
    import transformers

    bert = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32)
    transformers.BertModel(bert).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' model \\(BertModel\\), not a causal language model"):
        HFCausalLM(vocab_size=40, max_len=32, name_or_path=str(tmp_path / "bert"))
    with pytest.raises(ValueError, match="no such folder"):
        HFCausalLM(vocab_size=40, max_len=32, name_or_path=str(tmp_path / "nothing-here"))


def test_prompt_learning_cannot_be_merged_and_says_so():
    with pytest.raises(ValueError, match="cannot be merged"):
        adapters.merged(adapters.PromptTuning(num_virtual_tokens=2).apply(tiny()))
