"""Hugging Face `transformers` models behind attnlab's text-model interface (transformers is imported lazily)."""

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from attnlab.models.sampling import Streamer, decode

if TYPE_CHECKING:
    from attnlab.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)
# attnlab's special-token roles -> transformers' tokenizer arguments
_HF_SPECIALS = {"pad": "pad_token", "unk": "unk_token", "cls": "cls_token", "sep": "sep_token", "sos": "bos_token",
                "eos": "eos_token", "mask": "mask_token"}


class HFClassifier(nn.Module):
    """Any `AutoModelForSequenceClassification`: pretrained by hub name or local path, or randomly initialised.

    pretrained=true loads the weights of `name_or_path` (pair it with `tokenizer=hub` of the same name: the
    model only knows its own token ids). pretrained=false builds the architecture from its config (a model type
    such as "bert", a hub name or a local folder) with `config` overrides and the data's vocabulary.
    """

    def __init__(
        self,
        *,
        name_or_path: str,
        num_classes: int,
        vocab_size: int | None = None,
        pad_id: int | None = None,
        pretrained: bool = True,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import transformers  # heavy and optional: only this model needs it

        overrides = {"num_labels": num_classes, **(config or {})}
        if pretrained:
            self.model = transformers.AutoModelForSequenceClassification.from_pretrained(name_or_path, **overrides)
            embeddings = self.model.get_input_embeddings().num_embeddings
            if vocab_size is not None and vocab_size > embeddings:
                raise ValueError(
                    f"the tokenizer has {vocab_size} tokens but {name_or_path} embeds {embeddings}; "
                    f"use the model's own tokenizer: tokenizer@data.tokenizer=hub data.tokenizer.name_or_path={name_or_path}"
                )
            return
        if vocab_size is not None:
            overrides["vocab_size"] = vocab_size
        if pad_id is not None:
            overrides["pad_token_id"] = pad_id
        if name_or_path in transformers.CONFIG_MAPPING:
            model_config = transformers.AutoConfig.for_model(name_or_path, **overrides)
        else:
            model_config = transformers.AutoConfig.from_pretrained(name_or_path, **overrides)
        self.model = transformers.AutoModelForSequenceClassification.from_config(model_config)

    def output_layer(self) -> nn.Module:
        """The module that produces the logits: the head's Linear to num_labels, outside the base model."""
        base, n = self.model.base_model_prefix, self.model.config.num_labels
        heads = [m for name, m in self.model.named_modules()
                 if isinstance(m, nn.Linear) and m.out_features == n and not name.startswith(f"{base}.")]
        if len(heads) != 1:
            raise ValueError(f"cannot tell {type(self.model).__name__}'s output layer: {len(heads)} Linear layers "
                             f"outside {base!r} have {n} outputs")
        return heads[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Map token ids (B, T) and a mask (B, T) (True/1 = real token) to logits (B, num_classes)."""
        mask = None if attention_mask is None else attention_mask.long()
        return self.model(input_ids=input_ids, attention_mask=mask).logits


def _from_pretrained(transformers: Any, name_or_path: str) -> nn.Module:
    """AutoModelForCausalLM.from_pretrained with errors that say what was wrong: not a causal LM, or not found."""
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path)
    except OSError as err:
        where = "no such folder" if not Path(name_or_path).exists() else "no config.json in it"
        raise ValueError(f"cannot load {name_or_path!r}: {where}, and no hub model of that name could be fetched "
                         f"({type(err).__name__}); give a HF folder, a run directory (base=<run>) or a hub name on a "
                         "networked machine") from None
    # The saved architectures say what the weights were trained as: a BERT encoder has a causal-LM class in
    # transformers (BertLMHeadModel) but its weights never predicted the next token.
    trained_as = [a for a in getattr(config, "architectures", None) or [] if a.endswith(("LMHeadModel", "ForCausalLM"))]
    if type(config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING or (config.architectures and not trained_as):
        raise ValueError(f"{name_or_path} is a {config.model_type!r} model ({', '.join(config.architectures or [])}), not "
                         "a causal language model; a base must generate text (gpt2, a pretrain_gpt2 run, ...)")
    # from_pretrained returns the model in eval mode; Lightning keeps each module's mode, so a fine-tuning run would
    # train with dropout off. A built model starts in train mode, as every torch module does.
    return transformers.AutoModelForCausalLM.from_pretrained(name_or_path).train()


# The from-scratch GPT-2's size when an argument is left unset (None).
SCRATCH_SIZES = {"n_layer": 4, "n_embd": 128, "n_head": 4, "dropout": 0.1}


class HFCausalLM(nn.Module):
    """A `transformers` causal LM: pretrained (hub name or local HF folder) or a GPT-2 of the given size from scratch.

    A pretrained model only knows its own token ids: pair it with its own tokenizer. The sizes (n_layer, n_embd,
    n_head, dropout; unset: SCRATCH_SIZES) shape the from-scratch GPT-2 only (GPT2Config, position table of
    max_len); given with `name_or_path` they are an error, since the pretrained model keeps its own.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        max_len: int,
        name_or_path: str | None = None,
        n_layer: int | None = None,
        n_embd: int | None = None,
        n_head: int | None = None,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        sizes = {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "dropout": dropout}
        given = {k: v for k, v in sizes.items() if v is not None}
        if name_or_path is not None and given:
            raise ValueError(
                f"{', '.join(f'{k}={v}' for k, v in given.items())} shape a GPT-2 built from scratch; "
                f"{name_or_path} keeps its own: drop them ({' '.join(f'~model.{k}' for k in given)}) "
                "or build from scratch: model.name_or_path=null"
            )
        import transformers  # heavy and optional: only this model needs it

        self.vocab_size = vocab_size
        if name_or_path is None:
            size = {**SCRATCH_SIZES, **given}
            config = transformers.GPT2Config(
                vocab_size=vocab_size, n_positions=max_len, n_layer=size["n_layer"], n_embd=size["n_embd"],
                n_head=size["n_head"], resid_pdrop=size["dropout"], embd_pdrop=size["dropout"], attn_pdrop=size["dropout"],
                bos_token_id=None, eos_token_id=None,  # GPT-2's 50256 is no id of ours; save_pretrained sets eos
            )
            self.model = transformers.GPT2LMHeadModel(config)
        else:
            self.model = _from_pretrained(transformers, name_or_path)
            n = self.model.get_input_embeddings().num_embeddings
            if n < vocab_size:
                log.info("%s embeds %d tokens; resizing its embeddings to the tokenizer's %d", name_or_path, n,
                         vocab_size)
                self.model.resize_token_embeddings(vocab_size)
            elif n > vocab_size:
                log.info("%s embeds %d tokens; logits keep the tokenizer's first %d", name_or_path, n, vocab_size)
        # The longest context the model reads (its position table); None: no limit (relative positions).
        self.context: int | None = getattr(self.model.config, "max_position_embeddings", None)
        if self.context is not None and max_len > self.context:
            raise ValueError(
                f"max_len {max_len} exceeds {name_or_path}'s {self.context} positions; "
                f"set the data's max_len <= {self.context}"
            )

    def output_layer(self) -> nn.Module:
        """The module that produces the logits (HF's output embeddings, tied to the input ones in GPT-2)."""
        return self.model.get_output_embeddings()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map token ids (B, T) to next-token logits (B, T, V). A prompt-tuned model (peft) reads virtual tokens
        before x: their positions are dropped, so the logits line up with x whatever the adapter."""
        logits = self.model(input_ids=x, use_cache=False).logits
        return logits[:, -x.shape[1] :, : self.vocab_size]

    @torch.no_grad()
    def hf_generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        eos_id: int,
        pad_id: int,
        num_beams: int = 1,
        top_p: float | None = None,
        temperature: float = 1.0,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> list[list[int]]:
        """Continue left-padded prompts (B, P) with HF `generate` (greedy; beam search with num_beams > 1; nucleus
        sampling with top_p), through the peft model when there is one; the new tokens of each row, cut at eos."""
        sampling = top_p is not None
        out = self.model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask.long(), max_new_tokens=max_new_tokens,
            num_beams=num_beams, do_sample=sampling, top_p=top_p if sampling else None,
            temperature=temperature if sampling else None, length_penalty=length_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size, eos_token_id=eos_id, pad_token_id=pad_id,
            top_k=0 if sampling else None,  # nucleus sampling alone (HF's default adds top-k 50)
        )
        new = out[:, prompt_ids.shape[1] :]  # generate returns prompt + continuation (peft's prompt learning too)
        rows = []
        for row in new.tolist():
            rows.append(row[: row.index(eos_id)] if eos_id in row else row)
        return rows

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        streamer: Streamer | None = None,
    ) -> torch.Tensor:
        """Extend idx (B, T) by up to max_new_tokens sampled tokens -> (B, T + n); see attnlab.models.sampling."""
        cache: list[Any] = []  # HF's past_key_values after the tokens read so far

        def step(tokens: torch.Tensor) -> torch.Tensor:
            past = cache.pop() if cache else None
            if past is None or (self.context is not None and past.get_seq_length() >= self.context):
                # (Re)read the context, cropped to the position table: past it the window slides and the cache restarts.
                out = self.model(input_ids=tokens if self.context is None else tokens[:, -self.context :], use_cache=True)
            else:
                out = self.model(input_ids=tokens[:, -1:], past_key_values=past, use_cache=True)  # one step a token
            cache.append(out.past_key_values)
            return out.logits[:, -1, : self.vocab_size]  # (B, V)

        return decode(self, step, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      eos_id=eos_id, generator=generator, streamer=streamer)

    def save_pretrained(self, directory: str | Path, tokenizer: "Tokenizer | None" = None) -> None:
        """Write a HF folder (config.json, model.safetensors; with a tokenizer its files too) for from_pretrained."""
        import transformers

        directory = Path(directory)
        if tokenizer is not None and tokenizer.eos_id is not None:
            self.model.config.eos_token_id = tokenizer.eos_id
            if self.model.generation_config is not None:
                self.model.generation_config.eos_token_id = tokenizer.eos_id
        self.model.save_pretrained(directory)
        if tokenizer is None:
            return
        # tokenizer_config.json for transformers.AutoTokenizer, then attnlab's own tokenizer.json + specials.json
        # (written last, so the folder holds exactly the tokenizer the model was trained with).
        named = {_HF_SPECIALS[role]: token for role, token in tokenizer.specials.items()}
        transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.hf, **named).save_pretrained(directory)
        tokenizer.save(directory)
