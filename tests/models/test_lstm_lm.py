"""LSTM LM: shapes, gradients, weight tying, causality, stateful generation equal to recomputation; shared sampling."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.models.lstm_lm import LSTMLM
from attnlab.models.sampling import sample_next

V = 40


def lstm(**kw) -> LSTMLM:
    torch.manual_seed(0)
    return LSTMLM(vocab_size=V, d_embed=12, d_hidden=16, n_layers=2, dropout=0.1, **kw)


def lively() -> LSTMLM:
    """An eval-mode model with large random weights: unlike the small init, its greedy outputs depend on the context."""
    model = lstm().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    return model


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_shapes_gradients_and_initial_loss():
    model = lstm()
    x, y = tokens(3, 10), tokens(3, 10, seed=1)
    logits = model(x)
    assert logits.shape == (3, 10, V)
    loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    assert abs(loss.item() - torch.log(torch.tensor(float(V))).item()) < 0.1  # small init: near-uniform predictions
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_weight_tying():
    tied = lstm()
    assert tied.head.weight is tied.embed.weight
    assert isinstance(tied.proj, torch.nn.Linear) and tied.proj.out_features == 12  # d_hidden 16 -> d_embed 12
    untied = lstm(tie_weights=False)
    assert untied.head.weight is not untied.embed.weight and untied.head.in_features == 16
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(untied) - n_params(tied) == V * 16 - 16 * 12 - 12  # an own head instead of the projection
    same = LSTMLM(vocab_size=V, d_embed=16, d_hidden=16)
    assert isinstance(same.proj, torch.nn.Identity)  # nothing to project


def test_causality():
    model = lstm().eval()
    x = tokens(2, 12)
    changed = x.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % V
    a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_greedy_generation_carries_the_state():
    model = lively()
    prompt = tokens(2, 5)
    out = model.generate(prompt, 30, temperature=0)  # longer than any training window: a recurrence has no length limit
    idx = prompt
    for _ in range(30):  # recompute the whole sequence each step
        idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)
    model.train()  # generate samples without dropout and hands the mode back
    assert torch.equal(model.generate(prompt, 30, temperature=0), out) and model.training
    with pytest.raises(ValueError, match="T0 >= 1"):
        model.generate(prompt[:, :0], 3)


def test_sampling_uses_only_the_given_generator():
    model = lstm().eval()
    prompt = tokens(2, 3)
    torch.manual_seed(1)
    a = model.generate(prompt, 10, top_p=0.9, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(2)  # the global generator plays no part
    b = model.generate(prompt, 10, top_p=0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (2, 13)
    # The same draws as sampling from the recomputed logits with the same generator.
    g, idx = torch.Generator().manual_seed(7), prompt
    for _ in range(10):
        idx = torch.cat([idx, sample_next(model(idx)[:, -1], top_p=0.9, generator=g)], dim=1)
    assert torch.equal(a, idx)


def test_eos_ends_rows_and_stops():
    model = lively()
    for seed in range(20):  # a prompt pair where row 0 produces a token that row 1 never does
        prompt = tokens(2, 3, seed=seed)
        free = model.generate(prompt, 6, temperature=0)
        only_row0 = [t for t in free[0, 3:].tolist() if t not in free[1, 3:].tolist()]
        if only_row0:
            break
    eos = only_row0[0]
    end = 3 + free[0, 3:].tolist().index(eos)  # where row 0 first emits it
    out = model.generate(prompt, 6, temperature=0, eos_id=eos)
    assert out.shape == free.shape  # row 1 never ends: all 6 tokens
    assert torch.equal(out[1], free[1]) and torch.equal(out[0, : end + 1], free[0, : end + 1])
    assert (out[0, end:] == eos).all()  # a finished row keeps emitting eos
    alone = model.generate(prompt[:1], 6, temperature=0, eos_id=eos)
    assert torch.equal(alone, free[:1, : end + 1])  # once every row has ended, generation stops


# -- the shared sampling function ------------------------------------------------------------------------------

LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))


def draws(n: int = 2000, **kw) -> torch.Tensor:
    """n draws from each row of LOGITS -> (2, n)."""
    out = sample_next(LOGITS.repeat(n, 1), generator=torch.Generator().manual_seed(0), **kw)  # (2n, 1)
    return out.view(n, 2).T


def test_greedy_and_top_k():
    assert sample_next(LOGITS, temperature=0).tolist() == [[0], [3]]
    assert (draws(200, top_k=1) == torch.tensor([[0], [3]])).all()
    two = draws(top_k=2)
    assert set(two[0].tolist()) == {0, 1} and set(two[1].tolist()) == {2, 3}
    assert (two[0] == 0).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.04)  # renormalised over the kept


def test_top_p_keeps_the_smallest_set_reaching_p():
    # sorted masses 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps {0.5, 0.3} (0.5 < 0.7 before adding 0.3)
    assert set(draws(top_p=0.7)[0].tolist()) == {0, 1}
    assert set(draws(200, top_p=0.5)[0].tolist()) == {0}  # the first token alone reaches 0.5
    assert set(draws(top_p=0.9)[1].tolist()) == {1, 2, 3}
    assert set(draws(top_p=1.0)[0].tolist()) == {0, 1, 2, 3}


def test_temperature_sharpens_and_arguments_are_checked():
    cold = (draws(temperature=0.2)[0] == 0).float().mean().item()
    warm = (draws(temperature=1.0)[0] == 0).float().mean().item()
    assert warm == pytest.approx(0.5, abs=0.04) and cold > 0.9
    for bad in [dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)]:
        with pytest.raises(ValueError):
            sample_next(LOGITS, **bad)
