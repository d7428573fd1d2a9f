"""Language modelling: next-token cross-entropy; loss, perplexity and bits per byte; sampled continuations.

Evaluation metrics are exact corpus-level figures, not means of batch means: the summed negative log-likelihood
(nats), the number of predicted tokens and the number of text bytes they stand for are accumulated over the split,
then

    loss = nll / tokens        ppl = exp(loss)        bpb = nll / (ln 2 * bytes)

Bits per byte does not depend on the tokenizer, so a BPE model and a character model compare on it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MinMetric, SumMetric

from attnlab.errors import DivergedError
from attnlab.models.sampling import NonFiniteLogitsError, sample_text
from attnlab.tasks.base import Stage, Task

log = logging.getLogger("attnlab")

DEFAULT_PROMPTS = ("Once upon a time", "Lily and Ben went to the park.", "The little dog was sad because")


def checked_samples(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, **sampling: Any) -> list[str]:
    """`sample_text`, with non-finite logits (a diverged model) as a DivergedError the command line prints as one line."""
    try:
        return sample_text(model, tokenizer, prompts, max_new_tokens, **sampling)
    except NonFiniteLogitsError as err:
        raise DivergedError(f"cannot sample a continuation: {err}") from None


class LanguageModelingTask(Task):
    """Any model mapping token ids (B, T) to next-token logits (B, T, V); a batch is (x, y) with y = x shifted by one."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., dict[str, Any]] | None = None,
        token_bytes: Sequence[float] | Tensor | None = None,
        tokenizer: Any = None,
        prompts: list[str] = list(DEFAULT_PROMPTS),
        sample_tokens: int = 64,
        temperature: float = 0.8,
        top_k: int | None = 50,
        top_p: float | None = None,
        sample_seed: int = 0,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler)
        if temperature < 0 or sample_tokens < 0:
            raise ValueError(f"temperature and sample_tokens must be >= 0, got {temperature}, {sample_tokens}")
        # Bytes of text per token id: the denominator of bits per byte. Not saved in checkpoints (it is a fact of
        # the data, rebuilt from the tokenizer).
        self.register_buffer(
            "token_bytes", torch.as_tensor(token_bytes, dtype=torch.float32) if token_bytes is not None else None,
            persistent=False,
        )
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.sample_tokens = sample_tokens
        self.temperature, self.top_k, self.top_p, self.sample_seed = temperature, top_k, top_p, sample_seed
        for stage in ("val", "test"):
            for name in ("nll", "tokens", "bytes"):
                setattr(self, f"{stage}_{name}", SumMetric())
        self.val_loss_best = MinMetric()

    def _step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        x, y = batch  # (B, T) each
        logits = self._forward(x)  # (B, T, V)
        # Summed in fp32 whatever the autocast dtype: a bf16 sum over 10^5 tokens would lose the digits that matter.
        nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
        loss = nll / y.numel()
        if stage == "train":
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=y.numel())
            return loss
        getattr(self, f"{stage}_nll").update(nll.detach())
        getattr(self, f"{stage}_tokens").update(torch.tensor(float(y.numel()), device=y.device))
        if self.token_bytes is not None:
            getattr(self, f"{stage}_bytes").update(self.token_bytes[y].sum())
        return loss

    def _corpus_metrics(self, stage: Stage) -> dict[str, Tensor]:
        """loss, ppl and (if the data gave byte counts) bpb over everything the stage saw, synced across processes."""
        nll, tokens = getattr(self, f"{stage}_nll").compute(), getattr(self, f"{stage}_tokens").compute()
        loss = nll / tokens.clamp(min=1)
        metrics = {f"{stage}/loss": loss, f"{stage}/ppl": loss.exp()}
        if self.token_bytes is not None:
            metrics[f"{stage}/bpb"] = nll / (math.log(2) * getattr(self, f"{stage}_bytes").compute().clamp(min=1))
        for name in ("nll", "tokens", "bytes"):
            getattr(self, f"{stage}_{name}").reset()
        return metrics

    def on_validation_epoch_end(self) -> None:
        metrics = self._corpus_metrics("val")
        self.log_dict(metrics, prog_bar=True)
        if self.trainer.sanity_checking:
            return  # the sanity check never counts towards the best; a resume restores it (Task.on_load_checkpoint)
        self.val_loss_best(metrics["val/loss"])
        self.log("val/loss_best", self.val_loss_best.compute())
        self.log_samples()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._corpus_metrics("test"))

    # -- samples ---------------------------------------------------------------------------------------------------
    def log_samples(self) -> None:
        """Continue the fixed prompts; log the texts to the trackers and append them to plots/samples.md."""
        if not (self.prompts and self.sample_tokens and self.tokenizer is not None and self.trainer.is_global_zero):
            return
        if not hasattr(self.model, "generate"):
            return
        texts = checked_samples(self.model, self.tokenizer, self.prompts, self.sample_tokens, seed=self.sample_seed,
                                temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        step = self.trainer.global_step
        from attnlab.tracking import log_text

        log_text(list(self.loggers), "val/samples", texts, step=step)
        path = self.figure_path("samples.md")
        if path is not None:
            with path.open("a", encoding="utf-8") as f:
                f.write(f"## epoch {self.current_epoch + 1}, step {step}\n\n")
                f.writelines(f"- {t!r}\n" for t in texts)
                f.write("\n")
        log.info("sample at step %d: %r", step, texts[0])


class CountLMTask(LanguageModelingTask):
    """A count-based model (`ngram`): "training" is one pass of counting over the data's training token stream.

    The model needs `fit(tokens)` and a `fitted` flag; the data module needs `train_tokens()`. No optimizer or
    scheduler (conf/task/count_lm.yaml composes none; build refuses one): pair it with a trainer of one epoch and
    one batch (see conf/experiment/tinystories_ngram.yaml).
    """

    takes_optimizer = False

    def on_fit_start(self) -> None:
        if getattr(self.model, "fitted", False):
            return  # resumed from a checkpoint that holds the counts
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "train_tokens"):
            raise ValueError("a count-based model is fitted on datamodule.train_tokens(); this data module has none")
        tokens = datamodule.train_tokens()
        log.info("counting n-grams over %d training tokens", len(tokens))
        self.model.fit(tokens)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        return None  # the counts were taken in on_fit_start; there is nothing to descend

    def configure_optimizers(self) -> None:
        return None
