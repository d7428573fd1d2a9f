"""Greedy and beam search over both seq2seq models: the invariants of decoding, and learning a toy copy task.

The invariants are checked on tiny models trained a few dozen steps on copying random token strings: far from
converged, so their outputs depend on the source, <eos> comes at varied places and beams disagree with greedy.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.models.decoding import beam_search, greedy, length_caps
from attnlab.models.lstm_attention import LSTMAttention
from attnlab.models.seq2seq import TransformerSeq2Seq

PAD, SOS, EOS, V = 0, 1, 2, 12
LONGEST = 7  # source tokens
FACTS = {"src_vocab_size": V, "tgt_vocab_size": V, "src_pad_id": PAD, "tgt_pad_id": PAD}
KINDS = ["transformer", "lstm"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread; on a busy machine a second thread mostly waits for its peer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(kind: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    if kind == "transformer":
        sizes = {"d_model": 32, "n_heads": 2, "n_enc_layers": 1, "n_dec_layers": 2, "d_ff": 64, "dropout": 0.1}
        return TransformerSeq2Seq(**FACTS, max_src_len=16, max_tgt_len=24, **{**sizes, **kw})
    return LSTMAttention(**FACTS, **{"d_embed": 16, "d_hidden": 32, "n_layers": 2, "dropout": 0.1, **kw})


def copy_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources (n, LONGEST) of 2..LONGEST tokens padded at the end; targets (n, LONGEST + 2): <sos> source <eos>."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, LONGEST + 1, (n,), generator=g)
    src = torch.randint(3, V, (n, LONGEST), generator=g).masked_fill(torch.arange(LONGEST) >= lengths[:, None], PAD)
    tgt = torch.full((n, LONGEST + 2), PAD)
    tgt[:, 0] = SOS
    tgt[:, 1 : LONGEST + 1] = src
    tgt[torch.arange(n), lengths + 1] = EOS
    return src, tgt


def train(model: nn.Module, steps: int, lr: float) -> nn.Module:
    """Adam on the copy task, batches of 32; the model is left in training mode."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        src, tgt = copy_batch(32, seed=step)
        loss = F.cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    """Each kind trained 50 steps (a second or two each; at that learning rate the LSTM's outputs vary most)."""
    return {kind: train(build(kind), steps=50, lr={"transformer": 1e-2, "lstm": 2e-2}[kind]) for kind in KINDS}


@pytest.fixture(params=KINDS)
def model(request, models) -> nn.Module:
    return models[request.param]


def sources(n: int = 8) -> torch.Tensor:
    return copy_batch(n, seed=20_000)[0]


def test_the_models_are_not_degenerate(model):
    """What makes the invariants below worth checking: outputs that differ in tokens and length from source to source."""
    out = greedy(model, sources(), sos_id=SOS, eos_id=EOS)
    assert len({tuple(o) for o in out}) >= 4 and len({len(o) for o in out}) >= 3, out


def test_beam_of_one_is_greedy(model):
    src = sources()
    beams = beam_search(model, src, sos_id=SOS, eos_id=EOS, beam_size=1)
    assert [h[0].tokens for h in beams] == greedy(model, src, sos_id=SOS, eos_id=EOS)


def test_first_of_n_best_is_the_one_best(model):
    src = sources()
    one = beam_search(model, src, sos_id=SOS, eos_id=EOS, beam_size=4)
    many = beam_search(model, src, sos_id=SOS, eos_id=EOS, beam_size=4, n_best=4)
    assert [h[0] for h in many] == [h[0] for h in one] and all(len(h) == 1 for h in one)
    for hyps in many:
        assert 1 <= len(hyps) <= 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)  # distinct hypotheses


def test_cache_equals_recomputation(models):
    model = models["transformer"]
    src = sources()
    assert greedy(model, src, sos_id=SOS, eos_id=EOS, cache=False) == greedy(model, src, sos_id=SOS, eos_id=EOS)
    cached = beam_search(model, src, sos_id=SOS, eos_id=EOS, beam_size=3, n_best=3)
    recomputed = beam_search(model, src, sos_id=SOS, eos_id=EOS, beam_size=3, n_best=3, cache=False)
    assert [[h.tokens for h in hs] for hs in cached] == [[h.tokens for h in hs] for hs in recomputed]
    for hs, rs in zip(cached, recomputed):
        assert [h.score for h in hs] == pytest.approx([r.score for r in rs], abs=1e-5)


def test_padding_and_batch_mates_never_change_a_translation(model):
    src = sources()
    padded = F.pad(src, (0, 5), value=PAD)  # five more pad columns
    alone = [row[row != PAD][None] for row in src]  # each sentence in a batch of its own, no padding
    kw = {"sos_id": SOS, "eos_id": EOS, "max_len_b": 6}
    out = greedy(model, src, **kw)
    assert greedy(model, padded, **kw) == out
    assert [greedy(model, one, **kw)[0] for one in alone] == out
    beams = beam_search(model, src, beam_size=3, n_best=3, **kw)
    for other in (beam_search(model, padded, beam_size=3, n_best=3, **kw),
                  [beam_search(model, one, beam_size=3, n_best=3, **kw)[0] for one in alone]):
        assert [[h.tokens for h in hs] for hs in other] == [[h.tokens for h in hs] for hs in beams]
        for hs, os in zip(beams, other):
            assert [h.score for h in hs] == pytest.approx([o.score for o in os], abs=1e-5)


@torch.no_grad()
def test_teacher_forcing_equals_stepwise_log_probs_and_reorder_follows_rows(model):
    model.eval()
    src, _ = copy_batch(5, seed=30_000)
    tgt_in = torch.randint(3, V, (5, 6), generator=torch.Generator().manual_seed(1))  # not the model's own choices
    tgt_in[:, 0] = SOS
    forced = F.log_softmax(model(src, tgt_in), dim=-1)  # (B, T, V)
    order = torch.tensor([4, 0, 0, 2])  # drop rows 1 and 3, repeat row 0
    for cache in (True, False):
        state, rows = model.start(model.encode(src), cache=cache), torch.arange(5)
        for t in range(tgt_in.size(1)):
            if t == 3:
                state, rows = model.reorder(state, order), rows[order]
            log_probs, state = model.step(tgt_in[rows, t], state)
            torch.testing.assert_close(log_probs, forced[rows, t], atol=1e-5, rtol=1e-5)
    model.train()


def test_beam_scores_are_the_models_length_normalised_log_probs(model):
    src, alpha = sources(), 0.6
    caps = length_caps(model, src, max_len_a=1.5, max_len_b=10, max_len=None)
    beams = beam_search(model, src, sos_id=SOS, eos_id=EOS, beam_size=3, n_best=3, alpha=alpha)
    model.eval()
    with torch.no_grad():
        for i, hyps in enumerate(beams):
            for h in hyps:
                ended = len(h.tokens) < caps[i]  # shorter than its cap: the hypothesis ended with <eos>
                target = torch.tensor([h.tokens + [EOS] * ended])
                tgt_in = torch.cat([torch.tensor([[SOS]]), target[:, :-1]], dim=1)
                log_probs = F.log_softmax(model(src[i : i + 1], tgt_in), dim=-1)  # (1, T, V)
                total = log_probs.gather(-1, target[..., None]).sum().item()
                assert h.score == pytest.approx(total / ((5 + target.size(1)) / 6) ** alpha, abs=1e-4)
    model.train()


def test_lengths_are_capped(model):
    src = sources()
    n = (src != PAD).sum(dim=1)
    out = greedy(model, src, sos_id=SOS, eos_id=EOS, max_len_a=0.5, max_len_b=1)
    assert all(len(o) <= math.floor(0.5 * k) + 1 for o, k in zip(out, n.tolist()))
    for hyps in beam_search(model, src, sos_id=SOS, eos_id=EOS, beam_size=3, n_best=3, max_len=2):
        assert all(len(h.tokens) <= 2 for h in hyps)
    # One step: a translation of one token, or none where that step gave <eos>.
    assert all(len(o) <= 1 for o in greedy(model, src, sos_id=SOS, eos_id=EOS, max_len_a=0, max_len_b=1))


def test_the_transformer_never_decodes_past_its_positions(models):
    model = models["transformer"]
    src = sources()
    assert length_caps(model, src, max_len_a=10.0, max_len_b=10, max_len=None).max() == model.max_tgt_len
    greedy(model, src, sos_id=SOS, eos_id=V - 1, max_len_a=10.0)  # would raise past the position table
    beam_search(model, src, sos_id=SOS, eos_id=V - 1, max_len_a=10.0, beam_size=2)


def test_decoding_restores_the_mode_and_checks_n_best(model):
    model.eval()
    greedy(model, sources(2), sos_id=SOS, eos_id=EOS)
    assert not model.training
    model.train()
    with pytest.raises(ValueError, match="1 <= n_best <= beam_size"):
        beam_search(model, sources(2), sos_id=SOS, eos_id=EOS, beam_size=2, n_best=3)
    assert model.training


@pytest.mark.slow
@pytest.mark.parametrize("kind, steps", [("transformer", 600), ("lstm", 400)])
def test_learns_to_copy(kind, steps):
    """Masks, attention and decoding right: a tiny model copies unseen strings exactly (~10 s each on a busy CPU)."""
    model = train(build(kind, dropout=0.0, **({"n_dec_layers": 1} if kind == "transformer" else {"n_layers": 1})),
                  steps=steps, lr=5e-3)
    src, _ = copy_batch(100, seed=10_000)  # strings not trained on
    expected = [[t for t in row if t != PAD] for row in src.tolist()]
    for out in (greedy(model, src, sos_id=SOS, eos_id=EOS),
                [h[0].tokens for h in beam_search(model, src, sos_id=SOS, eos_id=EOS, beam_size=3)]):
        accuracy = sum(o == e for o, e in zip(out, expected)) / len(out)
        assert accuracy >= 0.95, f"{kind}: copies {accuracy:.0%} of the strings exactly"
