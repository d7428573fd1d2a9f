"""Sequence to sequence (translation): teacher-forced cross-entropy; loss, perplexity, sacreBLEU and chrF.

A batch is a dict: `src` (B, S) and `tgt` (B, T) = <sos> target <eos>, padded; `refs`, the raw reference sentences
(untokenized: BLEU is scored on detokenized text against them); `set`, the name of the evaluation set the batch
belongs to (`val`, `test_2016_flickr`, ...). Training reads only `src` and `tgt`.

Validation decodes greedily and scores `val/bleu`; test decodes with beam search and scores every test set the data
gives, as `test/bleu/<set>` and `test/chrf/<set>`. Scores come from sacrebleu's corpus BLEU (13a tokenization,
cased) and chrF, never a sentence-level average; their signatures go into metrics.json beside them. Loss and
perplexity are corpus-level (summed negative log-likelihood over target tokens / tokens), like the language models'.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric

from attnlab.models.decoding import beam_search, greedy
from attnlab.tasks.base import Stage, Task, gather_eval

log = logging.getLogger("attnlab")


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """sacreBLEU corpus BLEU and chrF of detokenized hypotheses against one reference each, with signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    return {
        "bleu": bleu.corpus_score(hypotheses, [references]).score,
        "chrf": chrf.corpus_score(hypotheses, [references]).score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


class Seq2SeqTask(Task):
    """Any model with `forward(src, tgt_in) -> logits (B, T, V)` and the decoding protocol of attnlab.models.decoding."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., dict[str, Any]] | None = None,
        tgt_pad_id: int,
        sos_id: int,
        eos_id: int,
        max_tgt_len: int,
        tgt_tokenizer: Any = None,
        label_smoothing: float = 0.1,
        val_bleu: bool = True,
        beam_size: int = 5,
        alpha: float = 0.6,
        max_len_a: float = 1.5,
        max_len_b: int = 10,
        examples: int = 3,
        attention_example: int | None = 0,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.tgt_pad_id, self.sos_id, self.eos_id, self.max_tgt_len = tgt_pad_id, sos_id, eos_id, max_tgt_len
        self.tokenizer = tgt_tokenizer  # decodes target ids to text; without one, no BLEU (loss and ppl only)
        self.label_smoothing = label_smoothing
        self.val_bleu = val_bleu
        self.beam_size, self.alpha, self.max_len_a, self.max_len_b = beam_size, alpha, max_len_a, max_len_b
        self.examples = examples
        # The sentence (index in the first test set) whose cross-attention is drawn at test time; None: no figure.
        self.attention_example = attention_example
        self._example: tuple[list[int], list[int]] | None = None  # its source ids and translation ids
        self.val_bleu_best = MaxMetric()
        self._eval: dict[str, dict[str, Any]] = {}  # per evaluation set: nll, tokens, (index, hypothesis, reference)

    # -- loss -------------------------------------------------------------------------------------------------------
    def _nll(self, batch: dict[str, Any], smoothing: float) -> tuple[Tensor, Tensor]:
        """Summed cross-entropy over the target tokens (fp32), and their number."""
        src, tgt = batch["src"], batch["tgt"]
        logits = self.model(src, tgt[:, :-1])  # (B, T-1, V)
        gold = tgt[:, 1:]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), gold.flatten(), ignore_index=self.tgt_pad_id,
                               label_smoothing=smoothing, reduction="sum")
        return loss, (gold != self.tgt_pad_id).sum()

    def _step(self, batch: dict[str, Any], stage: Stage) -> Tensor:
        if stage == "train":
            loss, tokens = self._nll(batch, self.label_smoothing)
            loss = loss / tokens.clamp(min=1)
            self.log_loss("train", loss, int(tokens))
            return loss
        nll, tokens = self._nll(batch, 0.0)  # smoothing regularises training; evaluation reports the plain NLL
        acc = self._eval.setdefault(batch["set"], {"nll": 0.0, "tokens": 0, "rows": []})
        acc["nll"] += float(nll)
        acc["tokens"] += int(tokens)
        if self.tokenizer is not None and (stage == "test" or self.val_bleu):
            hyps = self.translate_ids(batch["src"], beam_size=self.beam_size if stage == "test" else 1)
            texts = [self.tokenizer.decode(ids) for ids in hyps]
            index = batch["index"].tolist()
            acc["rows"].extend(zip(index, texts, batch["refs"]))
            if stage == "test" and self._example is None and self.attention_example in index:
                row = index.index(self.attention_example)
                src = batch["src"][row]
                self._example = (src[src != self.model.src_pad_id].tolist(), list(hyps[row]))
        return nll / tokens.clamp(min=1)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._step(batch, "test")  # one loader per test set; each batch names its set

    # -- decoding ---------------------------------------------------------------------------------------------------
    def translate_ids(self, src: Tensor, *, beam_size: int = 1, n_best: int = 1, alpha: float | None = None) -> list[Any]:
        """Token ids of the best translation of each source row (greedy for beam 1), or its n-best Hypotheses."""
        lengths = dict(sos_id=self.sos_id, eos_id=self.eos_id, max_len_a=self.max_len_a, max_len_b=self.max_len_b,
                       max_len=self.max_tgt_len)
        if beam_size == 1 and n_best == 1:
            return greedy(self.model, src, **lengths)
        nbest = beam_search(self.model, src, beam_size=beam_size, n_best=n_best,
                            alpha=self.alpha if alpha is None else alpha, **lengths)
        return nbest if n_best > 1 else [h[0].tokens for h in nbest]

    # -- epoch ends -------------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._eval = {}

    def on_test_epoch_start(self) -> None:
        self._eval = {}
        self._example = None

    def _gathered(self) -> dict[str, dict[str, Any]]:
        return gather_eval(self.trainer, self._eval)

    def _scores(self, stage: Stage) -> tuple[dict[str, float], dict[str, Any]]:
        """Metrics per evaluation set (`<stage>/<metric>/<set>` for test sets, `val/<metric>` for val)."""
        metrics: dict[str, float] = {}
        details: dict[str, Any] = {}
        for name, acc in sorted(self._gathered().items()):
            suffix = "" if name == stage or name == "val" else f"/{name}"
            loss = acc["nll"] / max(acc["tokens"], 1)
            metrics[f"{stage}/loss{suffix}"] = loss
            metrics[f"{stage}/ppl{suffix}"] = math.exp(min(loss, 50.0))
            if not acc["rows"]:
                continue
            rows = sorted(acc["rows"])  # by index: the data's order, whatever the batching
            hyps, refs = [r[1] for r in rows], [r[2] for r in rows]
            scores = corpus_scores(hyps, refs)
            metrics[f"{stage}/bleu{suffix}"] = scores["bleu"]
            metrics[f"{stage}/chrf{suffix}"] = scores["chrf"]
            details[name] = {"hypotheses": hyps, **{k: v for k, v in scores.items() if k.endswith("signature")}}
        self._eval = {}
        return metrics, details

    def on_validation_epoch_end(self) -> None:
        metrics, details = self._scores("val")
        self.log_dict(metrics, prog_bar=True, sync_dist=False)
        if self.trainer.sanity_checking or "val/bleu" not in metrics:
            return  # the sanity check never counts towards the best; a resume restores it (Task.on_load_checkpoint)
        self.val_bleu_best(torch.tensor(metrics["val/bleu"]))
        self.log("val/bleu_best", self.val_bleu_best.compute())
        for hyp in details["val"]["hypotheses"][: self.examples]:
            log.info("val translation: %s", hyp)

    def on_test_epoch_end(self) -> None:
        metrics, details = self._scores("test")
        self.log_dict(metrics, sync_dist=False)
        # Signatures say how the scores were computed (tokenizer, case, version): kept with every score.
        self.test_labels = {f"test/{m}_signature": sig[f"{m}_signature"]
                            for sig in list(details.values())[:1] for m in ("bleu", "chrf")}
        if not self.trainer.is_global_zero:
            return
        self.draw_attention()
        for name, d in details.items():  # the detokenized translations, one line per source sentence, in order
            path = self.figure_path(f"translations_{name}.txt")
            if path is not None:
                path.write_text("".join(f"{h}\n" for h in d["hypotheses"]), encoding="utf-8")

    def draw_attention(self) -> None:
        """plots/cross_attention.png: where the model looked in the source for each token of one test translation."""
        path = self.figure_path("cross_attention.png") if self._example and hasattr(self.model, "cross_attention") else None
        if path is None or self.tokenizer is None:
            return
        src_ids, hyp_ids = self._example
        device = self.device
        src = torch.tensor([src_ids], device=device)
        tgt_in = torch.tensor([[self.sos_id, *hyp_ids]], device=device)
        weights = self.model.cross_attention(src, tgt_in)[0].float().cpu().numpy()  # (T, S)
        from attnlab import plots

        piece = lambda i: self.tokenizer.decode([i], skip_special=False)  # noqa: E731
        plots.attention_map(weights, [piece(i) for i in src_ids], [piece(i) for i in (*hyp_ids, self.eos_id)], path,
                            title=f"cross-attention, test sentence {self.attention_example}")
        self.publish_figure("test/cross_attention", path)
