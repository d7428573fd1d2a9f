"""Shared sampling: non-finite logits raise a clear error in every mode, from sample_next and from a model's generate."""

import pytest
import torch

from attnlab.models.gpt import GPT
from attnlab.models.sampling import NonFiniteLogitsError, sample_next

MODES = [dict(temperature=0), dict(temperature=1.0), dict(top_k=2), dict(top_p=0.9)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("mode", MODES)
def test_non_finite_logits_raise_a_clear_error(mode, bad):
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, bad, 1.0]])
    with pytest.raises(NonFiniteLogitsError, match=r"NaN or \+inf \(rows \[1\]\).*diverged"):
        sample_next(logits, **mode)
    assert issubclass(NonFiniteLogitsError, ValueError)


@pytest.mark.parametrize("mode", MODES)
def test_masked_tokens_are_still_allowed(mode):
    logits = torch.tensor([[2.0, float("-inf"), 0.0]])
    assert sample_next(logits, generator=torch.Generator().manual_seed(0), **mode).item() in (0, 2)


def test_a_model_with_nan_weights_fails_clearly_in_generate():
    torch.manual_seed(0)
    model = GPT(vocab_size=16, max_len=8, d_model=16, n_layers=1, n_heads=2)
    with torch.no_grad():
        model.ln_f.weight[0] = float("nan")  # as a diverged run leaves it
    with pytest.raises(NonFiniteLogitsError):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 4)
