"""Hugging Face `transformers` models behind attnlab's text-model interface (transformers is imported lazily)."""

from typing import Any

import torch
from torch import nn


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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Map token ids (B, T) and a mask (B, T) (True/1 = real token) to logits (B, num_classes)."""
        mask = None if attention_mask is None else attention_mask.long()
        return self.model(input_ids=input_ids, attention_mask=mask).logits
