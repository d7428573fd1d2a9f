"""Masked-language-model pretraining for the encoders (BERT, Devlin et al., 2019; RoBERTa, Liu et al., 2019).

Of the tokens that are not special and not padding, `mask_prob` (15%) are chosen; of those, `replace_mask` (80%)
become <mask>, `replace_random` (10%) a random non-special token and the rest stay as they are. The loss is the
cross-entropy of the original token at the chosen positions only, and the V-wide output layer runs on those positions
alone. `masking=dynamic` draws new masks every epoch (RoBERTa); `static` draws them once per window and keeps them
(BERT's original data, which fixed each sequence's masks). `whole_word=true` chooses words, not tokens: every piece of
a chosen word is masked (the data states which tokens begin a word). Validation and test always use the same masks,
so their figures compare across epochs and runs.

Masks are drawn per window from a generator seeded by (seed, window index[, epoch]): they do not depend on the batch
a window falls in, on the number of processes or on the global RNG. Metrics (val/ and test/): loss (mean over the
chosen tokens), ppl = exp(loss), acc = the share of chosen tokens predicted exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MinMetric, SumMetric

from attnlab.tasks.base import Stage, Task

Masking = Literal["dynamic", "static"]


def mask_keys(seed: int, index: Sequence[int], epoch: int | None = None) -> list[int]:
    """One generator seed per window: from (seed, index), and the epoch for dynamic masking."""
    extra = [] if epoch is None else [epoch + 1]
    return [int(np.random.SeedSequence([seed, int(i), *extra]).generate_state(1, np.uint64)[0] >> 1) for i in index]


def draw_masks(
    input_ids: Tensor,
    keys: Sequence[int],
    *,
    mask_id: int,
    never: Tensor,
    candidates: Tensor,
    mask_prob: float = 0.15,
    replace_mask: float = 0.8,
    replace_random: float = 0.1,
    attention_mask: Tensor | None = None,
    word_start: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking of a batch (B, T) -> (the masked input ids (B, T), the chosen positions (B, T) bool).

    never: (V,) bool, tokens never chosen (the specials); candidates: (n,) ids a random replacement draws from;
    attention_mask: (B, T), 0 = padding (never chosen); word_start: (V,) bool, whole-word masking (a word is a token
    that begins one and the tokens after it up to the next; a special token ends a word).
    """
    b, t = input_ids.shape
    uniforms, randoms = [], []
    for key in keys:  # one generator per window: its masks depend on its key only
        g = torch.Generator().manual_seed(key)
        uniforms.append(torch.rand(2, t, generator=g))
        randoms.append(torch.randint(0, len(candidates), (t,), generator=g))
    u = torch.stack(uniforms).to(input_ids.device)  # (B, 2, T)
    choose, kind = u[:, 0], u[:, 1]
    ids = input_ids
    special = never.to(ids.device)[ids]  # (B, T)
    eligible = ~special
    if attention_mask is not None:
        eligible &= attention_mask.bool()
    if word_start is not None:
        # A position begins a word if its token does, or it is special, or it follows a special; all of a word's
        # positions take the draw of its first.
        after_special = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=ids.device), special[:, :-1]], dim=1)
        begins = word_start.to(ids.device)[ids] | special | after_special
        pos = torch.arange(t, device=ids.device).expand(b, t)
        first = torch.where(begins, pos, torch.zeros_like(pos)).cummax(dim=1).values
        choose = choose.gather(1, first)
    chosen = (choose < mask_prob) & eligible
    to_mask = chosen & (kind < replace_mask)
    to_random = chosen & (kind >= replace_mask) & (kind < replace_mask + replace_random)
    masked = ids.clone()
    masked[to_mask] = mask_id
    random_ids = candidates.to(ids.device)[torch.stack(randoms).to(ids.device)]  # (B, T)
    masked[to_random] = random_ids[to_random]
    return masked, chosen


class MaskedLMTask(Task):
    """An encoder with a masked-LM head (`model.head=tokens`: `encode` and `token_logits`); a batch is
    ({"input_ids", ["attention_mask"]}, window indices) as attnlab.data.masked_corpus gives it."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[..., dict[str, Any]] | None = None,
        vocab_size: int,
        mask_id: int,
        special_ids: Sequence[int],
        word_start: Tensor | None = None,
        mask_prob: float = 0.15,
        replace_mask: float = 0.8,
        replace_random: float = 0.1,
        masking: Masking = "dynamic",
        whole_word: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler)
        if not (hasattr(model, "encode") and getattr(model, "head_kind", None) == "tokens"):
            raise ValueError("task=masked_lm needs an encoder with a masked-LM head: model=bert|roberta|distilbert|encoder "
                             "with model.head=tokens")
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        if replace_mask < 0 or replace_random < 0 or replace_mask + replace_random > 1:
            raise ValueError(f"replace_mask and replace_random must be >= 0 with a sum <= 1, got {replace_mask}, {replace_random}")
        if masking not in ("dynamic", "static"):
            raise ValueError(f"unknown masking {masking!r}; choose dynamic (new masks every epoch) or static (fixed once)")
        if whole_word and word_start is None:
            raise ValueError("whole_word=true needs the data's word_start fact; this data module states none")
        never = torch.zeros(vocab_size, dtype=torch.bool)
        never[list(special_ids)] = True
        self.register_buffer("never", never, persistent=False)
        self.register_buffer("candidates", (~never).nonzero().squeeze(1), persistent=False)
        self.register_buffer("word_start", torch.as_tensor(word_start).bool() if whole_word else None, persistent=False)
        self.mask_id, self.mask_prob = mask_id, mask_prob
        self.replace_mask, self.replace_random = replace_mask, replace_random
        self.masking, self.seed = masking, seed
        for stage in ("val", "test"):
            for name in ("nll", "tokens", "correct"):
                setattr(self, f"{stage}_{name}", SumMetric())
        self.val_loss_best = MinMetric()

    def masks(self, inputs: dict[str, Tensor], index: Tensor, stage: Stage) -> tuple[Tensor, Tensor]:
        """(masked input ids, chosen positions) of a batch: training draws by epoch when masking is dynamic."""
        epoch = self.current_epoch if stage == "train" and self.masking == "dynamic" else None
        return draw_masks(inputs["input_ids"], mask_keys(self.seed, index.tolist(), epoch), mask_id=self.mask_id,
                          never=self.never, candidates=self.candidates, mask_prob=self.mask_prob,
                          replace_mask=self.replace_mask, replace_random=self.replace_random,
                          attention_mask=inputs.get("attention_mask"), word_start=self.word_start)

    def _step(self, batch: tuple[dict[str, Tensor], Tensor], stage: Stage) -> Tensor:
        inputs, index = batch
        masked, chosen = self.masks(inputs, index, stage)
        hidden, _ = self.model.encode(**{**inputs, "input_ids": masked})  # (B, T, D)
        targets = inputs["input_ids"][chosen]  # (N,)
        logits = self.model.token_logits(hidden[chosen])  # (N, V): the output layer on the chosen positions only
        nll = F.cross_entropy(logits.float(), targets, reduction="sum")
        loss = nll / max(targets.numel(), 1)
        if stage == "train":
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=max(targets.numel(), 1))
            return loss
        getattr(self, f"{stage}_nll").update(nll.detach())
        getattr(self, f"{stage}_tokens").update(torch.tensor(float(targets.numel()), device=nll.device))
        getattr(self, f"{stage}_correct").update((logits.argmax(-1) == targets).sum().float())
        return loss

    def _metrics(self, stage: Stage) -> dict[str, Tensor]:
        nll, tokens, correct = (getattr(self, f"{stage}_{n}").compute() for n in ("nll", "tokens", "correct"))
        for n in ("nll", "tokens", "correct"):
            getattr(self, f"{stage}_{n}").reset()
        loss = nll / tokens.clamp(min=1)
        return {f"{stage}/loss": loss, f"{stage}/ppl": loss.exp(), f"{stage}/acc": correct / tokens.clamp(min=1)}

    def on_validation_epoch_end(self) -> None:
        metrics = self._metrics("val")
        self.log_dict(metrics, prog_bar=True)
        if self.trainer.sanity_checking:
            return
        self.val_loss_best(metrics["val/loss"])
        self.log("val/loss_best", self.val_loss_best.compute())

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._metrics("test"))
