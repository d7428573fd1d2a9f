"""Language-model metrics against numbers computed by hand, not by the formula the task uses: a model whose
next-token distribution is fixed, so the corpus loss, perplexity and bits per byte are known in closed form."""

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from attnlab.tasks.language_modeling import LanguageModelingTask


class FixedDistribution(nn.Module):
    """Predicts the same next-token probabilities at every position, whatever it reads."""

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(probs).log())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*x.shape, -1)  # (B, T, V)


def evaluate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], token_bytes: list[float]) -> dict[str, float]:
    task = LanguageModelingTask(model=model, optimizer=torch.optim.SGD, token_bytes=token_bytes, sample_tokens=0)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    (metrics,) = trainer.validate(task, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    return metrics


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity():
    V = 7
    x = torch.randint(0, V, (2, 3, 5), generator=torch.Generator().manual_seed(0))  # two batches of (3, 5)
    metrics = evaluate(FixedDistribution([1 / V] * V), [(x[0], x[0]), (x[1], x[1])], token_bytes=[2.0] * V)
    assert metrics["val/loss"] == pytest.approx(math.log(V), rel=1e-6)
    assert metrics["val/ppl"] == pytest.approx(V, rel=1e-6)  # as unsure as a fair 7-sided die
    assert metrics["val/bpb"] == pytest.approx(math.log2(V) / 2, rel=1e-6)  # log2(7) bits per token, 2 bytes a token


def test_hand_computed_perplexity_over_uneven_batches():
    # p = 1/2, 1/4, 1/8, 1/8 for tokens 0..3. Targets: batch 1 [0, 1, 2, 3], batch 2 [0, 0]:
    # nll = (1 + 2 + 3 + 3 + 1 + 1) ln 2 = 11 ln 2 over 6 tokens -> ppl = 2^(11/6) (a mean of batch means would give
    # 2^((9/4 + 1) / 2) = 2^(13/8)); bytes: token 0 has 1, the others 3 -> 1 + 3 + 3 + 3 + 1 + 1 = 12 -> bpb = 11 / 12.
    y1, y2 = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 0]])
    metrics = evaluate(FixedDistribution([0.5, 0.25, 0.125, 0.125]), [(y1, y1), (y2, y2)], token_bytes=[1.0, 3.0, 3.0, 3.0])
    assert metrics["val/ppl"] == pytest.approx(2 ** (11 / 6), rel=1e-6)
    assert metrics["val/loss"] == pytest.approx(11 / 6 * math.log(2), rel=1e-6)
    assert metrics["val/bpb"] == pytest.approx(11 / 12, rel=1e-6)
