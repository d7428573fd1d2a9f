"""Summarisation with a causal LM: the prompt-then-summary sequence, loss on the summary tokens only; ROUGE from
generated summaries.

Loss: next-token cross-entropy where the label is not -100 (the data module masks the prompt and the padding), summed
over tokens then divided by their count, so `val/loss` and `val/ppl` are per summary token.

ROUGE: `rouge-score` (Google's reimplementation of ROUGE-1.5.5) with the Porter stemmer on, F-measure, scored per
document against each reference and the maximum taken (per metric) over a document's references, as SciTLDR's paper
does for its multi-reference test set; the corpus figure is the mean over documents, x100. rougeLsum splits summaries
into sentences at newlines (one-sentence TL;DRs: it equals rougeL unless a summary has several lines). The lead
baseline (the source's first sentence, `attnlab.data.summarization.lead`) is scored by the same code on every set.

Names: `<stage>/rouge1|rouge2|rougeL|rougeLsum`, `<stage>/gen_len` (mean generated tokens) for val and the first test
set; other test sets add `/<set>` (`test/rougeL/dialogsum`); the lead baseline is `test/lead_<metric>[/<set>]`.
Validation generates for the first `val_generate` documents only (greedy), test for all (`num_beams`).
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
from torchmetrics import MaxMetric

from attnlab.tasks.base import Stage, Task, gather_eval

log = logging.getLogger("attnlab")

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
IGNORE = -100


def rouge_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean over documents of the max over each document's references of ROUGE F1 (x100), stemmed."""
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs "Using default tokenizer." per scorer

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} summaries for {len(references)} reference sets")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, refs in zip(hypotheses, references):
        if not refs:
            raise ValueError("a document without references cannot be scored")
        scores = [scorer.score(ref, hyp) for ref in refs]
        for key in ROUGE_TYPES:
            totals[key] += max(s[key].fmeasure for s in scores)
    n = max(len(hypotheses), 1)
    return {key: 100.0 * value / n for key, value in totals.items()}


ROUGE_SETTINGS = ("rouge-score: F-measure x100, Porter stemmer on, per document the max over its references, mean "
                  "over documents; rougeLsum splits at newlines")


def summarize_texts(model: nn.Module, preprocess: Any, texts: Sequence[str], *, max_new_tokens: int, eos_id: int,
                    pad_id: int, **generation: Any) -> list[str]:
    """Summaries of raw texts: each wrapped in the run's prompt template (`preprocess.prompt`, the training
    truncation), left-padded into one batch, continued by `model.hf_generate`; app/generate.py and serving use it."""
    prompts = preprocess.prompt(texts)
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (B, P) left-padded
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for b, prompt in enumerate(prompts):
        ids[b, width - len(prompt) :] = torch.tensor(prompt)
        mask[b, width - len(prompt) :] = True
    device = next(model.parameters()).device
    rows = model.hf_generate(ids.to(device), mask.to(device), max_new_tokens=max_new_tokens, eos_id=eos_id,
                             pad_id=pad_id, **generation)
    return [preprocess.decode(r) for r in rows]


class SummarizationTask(Task):
    """A causal LM (`model(input_ids) -> (B, T, V)` logits, `model.hf_generate(...)`) fine-tuned to summarise."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., dict[str, Any]] | None = None,
        tokenizer: Any = None,
        eos_id: int,
        pad_id: int,
        max_summary_len: int,
        test_sets: list[str] = [],
        num_beams: int = 1,
        top_p: float | None = None,
        temperature: float = 1.0,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        val_generate: int | None = 100,
        examples: int = 2,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler)
        if not hasattr(model, "hf_generate"):
            raise ValueError(f"{type(model).__name__} cannot generate summaries (no hf_generate): use model=hf_causal_lm")
        if num_beams < 1 or (val_generate is not None and val_generate < 0):
            raise ValueError(f"num_beams must be >= 1 and val_generate >= 0 or null, got {num_beams}, {val_generate}")
        self.tokenizer = tokenizer
        self.eos_id, self.pad_id, self.max_summary_len = eos_id, pad_id, max_summary_len
        self.test_sets = list(test_sets)
        self.generation = {"num_beams": num_beams, "top_p": top_p, "temperature": temperature,
                           "length_penalty": length_penalty, "no_repeat_ngram_size": no_repeat_ngram_size}
        self.val_generate = val_generate
        self.examples = examples
        self.val_rougeL_best = MaxMetric()
        self._eval: dict[str, dict[str, Any]] = {}  # per evaluation set: nll, tokens, rows (index, hyp, refs, source)

    def _step(self, batch: dict[str, Any], stage: Stage) -> Tensor:
        ids, labels = batch["input_ids"], batch["labels"]
        logits = self._forward(ids)  # (B, T, V)
        target = labels[:, 1:]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE, reduction="sum")
        tokens = (target != IGNORE).sum()
        loss = nll / tokens.clamp(min=1)
        if stage == "train":
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=ids.shape[0])
            return loss
        acc = self._eval.setdefault(batch["set"], {"nll": 0.0, "tokens": 0, "rows": []})
        acc["nll"] += float(nll)
        acc["tokens"] += int(tokens)
        if self._generates(stage, batch):
            summaries = self.summarize(batch["prompt_ids"], batch["prompt_mask"], greedy=stage == "val")
            acc["rows"].extend(zip(batch["index"].tolist(), summaries, batch["refs"], batch["sources"]))
        return loss

    def _generates(self, stage: Stage, batch: dict[str, Any]) -> bool:
        if stage == "test" or self.val_generate is None:
            return True
        return self.val_generate > 0 and int(batch["index"][0]) < self.val_generate

    def summarize(self, prompt_ids: Tensor, prompt_mask: Tensor, *, greedy: bool = False) -> list[tuple[str, int]]:
        """(summary text, its length in tokens) for each left-padded prompt."""
        settings = {**self.generation, **({"num_beams": 1, "top_p": None} if greedy else {})}
        rows = self.model.hf_generate(prompt_ids, prompt_mask, max_new_tokens=self.max_summary_len, eos_id=self.eos_id,
                                      pad_id=self.pad_id, **settings)
        return [(self.tokenizer.decode(r).strip(), len(r)) for r in rows]

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._step(batch, "test")  # one loader per test set; each batch names its set

    # -- epoch ends ----------------------------------------------------------------------------------------------------
    def _gathered(self) -> dict[str, dict[str, Any]]:
        return gather_eval(self.trainer, self._eval)

    def _scores(self, stage: Stage) -> tuple[dict[str, float], dict[str, list[str]]]:
        from attnlab.data.summarization import lead

        metrics: dict[str, float] = {}
        summaries: dict[str, list[str]] = {}
        first = self.test_sets[0] if self.test_sets else None
        for name, acc in sorted(self._gathered().items()):
            suffix = "" if name in ("val", first) else f"/{name}"
            loss = acc["nll"] / max(acc["tokens"], 1)
            metrics[f"{stage}/loss{suffix}"] = loss
            metrics[f"{stage}/ppl{suffix}"] = math.exp(min(loss, 50.0))
            if not acc["rows"]:
                continue
            rows = sorted(acc["rows"], key=lambda r: r[0])  # the data's order, whatever the batching
            hyps, refs = [r[1][0] for r in rows], [r[2] for r in rows]
            for key, value in rouge_scores(hyps, refs).items():
                metrics[f"{stage}/{key}{suffix}"] = value
            metrics[f"{stage}/gen_len{suffix}"] = sum(r[1][1] for r in rows) / len(rows)
            if stage == "test":
                for key, value in rouge_scores([lead(r[3]) for r in rows], refs).items():
                    metrics[f"test/lead_{key}{suffix}"] = value
            summaries[name] = hyps
        self._eval = {}
        return metrics, summaries

    def on_validation_epoch_end(self) -> None:
        metrics, summaries = self._scores("val")
        self.log_dict(metrics, prog_bar=True, sync_dist=False)
        if self.trainer.sanity_checking or "val/rougeL" not in metrics:
            return  # the sanity check never counts towards the best; a resume restores it (Task.on_load_checkpoint)
        self.val_rougeL_best(torch.tensor(metrics["val/rougeL"]))
        self.log("val/rougeL_best", self.val_rougeL_best.compute())
        for text in summaries.get("val", [])[: self.examples]:
            log.info("val summary: %s", text)

    def on_test_epoch_end(self) -> None:
        metrics, summaries = self._scores("test")
        self.log_dict(metrics, sync_dist=False)
        self.test_labels = {"test/rouge_settings": ROUGE_SETTINGS}
        if not self.trainer.is_global_zero:
            return
        for name, hyps in summaries.items():  # the generated summaries, one line per document, in order
            path = self.figure_path(f"summaries_{name}.txt")
            if path is not None:
                path.write_text("".join(f"{h.replace(chr(10), ' ')}\n" for h in hyps), encoding="utf-8")
