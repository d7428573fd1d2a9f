"""Kneser-Ney n-gram LM: discounts and one probability by hand, parity with a dict-based reference, normalisation,
finite history, perplexity against a unigram, state_dict round trip into a fresh model, generation, fit at scale."""

import io
import time
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnlab.models import ngram
from attnlab.models.ngram import NGramLM, kn_discounts


class ReferenceKN:
    """Interpolated modified Kneser-Ney written plainly over dicts of n-gram tuples, one probability at a time."""

    def __init__(self, stream: list[int], order: int, V: int) -> None:
        self.V = V
        counts = {order: Counter(tuple(stream[i : i + order]) for i in range(len(stream) - order + 1))}
        for k in range(order - 1, 0, -1):  # continuation counts: one per distinct left extension
            counts[k] = Counter(gram[1:] for gram in counts[k + 1])
        self.followers = {k: defaultdict(dict) for k in counts}  # followers[k][h][w] = a(h w)
        for k, grams in counts.items():
            for gram, c in grams.items():
                self.followers[k][gram[:-1]][gram[-1]] = c
        self.D = {k: kn_discounts(np.array(list(grams.values()))) for k, grams in counts.items()}

    def p(self, w: int, h: tuple[int, ...]) -> float:
        k = len(h) + 1
        lower = 1.0 / self.V if k == 1 else self.p(w, h[1:])
        seen = self.followers[k].get(h)
        if not seen:
            return lower  # unseen context: all the mass goes to the shorter one

        def D(c: int) -> float:
            return self.D[k][min(c, 3) - 1]

        A = sum(seen.values())
        gamma = sum(D(c) for c in seen.values())
        own = max(seen[w] - D(seen[w]), 0.0) if w in seen else 0.0
        return own / A + gamma / A * lower


def random_stream(n: int, V: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, n)


def test_discounts_follow_chen_goodman():
    # n1 = 6, n2 = 3, n3 = 2, n4 = 1 -> Y = 6 / (6 + 2*3) = 0.5
    counts = np.array([1] * 6 + [2] * 3 + [3] * 2 + [4] + [9, 17])
    # D1 = 1 - 2Y n2/n1 = 0.5;  D2 = 2 - 3Y n3/n2 = 1.0;  D3+ = 3 - 4Y n4/n3 = 2.0
    np.testing.assert_allclose(kn_discounts(counts), [0.5, 1.0, 2.0])
    # n3 = 1, n4 = 4: D2 = 2 - 3 * 0.5 * 1/3 = 1.5 and D3+ = 3 - 4 * 0.5 * 4/1 = -5, clipped to MIN_DISCOUNT
    clipped = kn_discounts(np.array([1] * 6 + [2] * 3 + [3] + [4] * 4))
    np.testing.assert_allclose(clipped, [0.5, 1.5, ngram.MIN_DISCOUNT])
    # no count of 2: the estimate is undefined, the fallback is used
    np.testing.assert_allclose(kn_discounts(np.array([1, 1, 3, 5])), ngram.FALLBACK_DISCOUNTS)


def test_one_probability_by_hand():
    # stream a b a b c a b over {a, b, c, d} = {0, 1, 2, 3}; order 2
    model = NGramLM(vocab_size=4, order=2).fit(np.array([0, 1, 0, 1, 2, 0, 1]))
    # bigram counts: ab 3, ba 1, bc 1, ca 1 -> n2 = 0: fallback D = (0.5, 1, 1.5) (likewise for the unigram level)
    # continuation counts N1+(. w): a 2 (after b, c), b 1 (after a), c 1 (after b), d 0; total 4
    # unigram gamma = D1 * 2 + D2 * 1 = 2 -> p1(w) = max(N1+(. w) - D, 0) / 4 + 2/4 * 1/4
    p1 = {0: (2 - 1.0) / 4 + 0.125, 1: (1 - 0.5) / 4 + 0.125, 2: (1 - 0.5) / 4 + 0.125, 3: 0.125}
    # context a: only ab (3 times) -> A = 3, gamma = D3+ = 1.5
    p_b_after_a = (3 - 1.5) / 3 + 1.5 / 3 * p1[1]  # = 0.625
    p_d_after_a = 1.5 / 3 * p1[3]  # = 0.0625: an unseen token keeps mass through the lower orders
    # context b: ba 1, bc 1 -> A = 2, gamma = 0.5 + 0.5
    p_c_after_b = (1 - 0.5) / 2 + 1 / 2 * p1[2]  # = 0.375
    probs = model(torch.tensor([[0, 1, 3]])).exp()[0]  # positions: after a, after b, after d (never seen)
    assert probs[0, 1].item() == pytest.approx(p_b_after_a) and p_b_after_a == 0.625
    assert probs[0, 3].item() == pytest.approx(p_d_after_a)
    assert probs[1, 2].item() == pytest.approx(p_c_after_b)
    torch.testing.assert_close(probs[2], torch.tensor([p1[w] for w in range(4)]))  # unseen context: the unigram


@pytest.mark.parametrize("order", [2, 3, 4])
def test_matches_reference_with_unseen_contexts_and_tokens(order):
    V = 7
    stream = random_stream(400, V - 1, seed=order)  # token 6 never occurs
    model = NGramLM(vocab_size=V, order=order).fit(stream)
    ref = ReferenceKN(stream.tolist(), order, V)
    x = torch.tensor([[6, 0, 1, 2, 6, 3, 3, 4, 5, 0], stream[50:60].tolist()])
    probs = model(x).exp()
    for b in range(x.size(0)):
        for t in range(x.size(1)):
            history = tuple(x[b, max(0, t - order + 2) : t + 1].tolist())  # the first positions read less
            expected = torch.tensor([ref.p(w, history) for w in range(V)], dtype=torch.float32)
            torch.testing.assert_close(probs[b, t], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("order", [2, 3, 4, 5])
@pytest.mark.parametrize("dense", [True, False])
def test_probabilities_sum_to_one(order, dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(ngram, "DENSE_BIGRAM_MAX_VOCAB", 0)  # the sparse bigram path of large vocabularies
    V = 50
    model = NGramLM(vocab_size=V, order=order).fit(random_stream(3000, 40, seed=1))  # ids >= 40 are never seen
    x = torch.cat([torch.from_numpy(random_stream(24, V, seed=2)).view(2, 12), torch.arange(38, 50).view(1, 12)])
    probs = model(x).exp()  # (3, 12, V)
    assert probs.shape == (3, 12, V) and probs.dtype == torch.float32
    assert (probs > 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 12))


def test_dense_and_sparse_bigram_paths_agree(monkeypatch):
    model = NGramLM(vocab_size=30, order=3).fit(random_stream(2000, 30, seed=3))
    x = torch.from_numpy(random_stream(40, 30, seed=4)).view(2, 20)
    dense = model(x)
    monkeypatch.setattr(ngram, "DENSE_BIGRAM_MAX_VOCAB", 0)
    torch.testing.assert_close(model(x), dense)


def test_history_is_the_last_order_minus_one_tokens():
    order = 3
    model = NGramLM(vocab_size=10, order=order).fit(random_stream(2000, 10, seed=5))
    x = torch.from_numpy(random_stream(30, 10, seed=6)).view(2, 15)
    out = model(x)
    for t in range(15):
        window = x[:, max(0, t - order + 2) : t + 1]
        torch.testing.assert_close(out[:, t], model(window)[:, -1])  # causal, and nothing older than the window
    changed = x.clone()
    changed[:, :5] = (changed[:, :5] + 1) % 10
    torch.testing.assert_close(model(changed)[:, 6:], out[:, 6:])
    assert not torch.allclose(model(changed)[:, 4:6], out[:, 4:6])


def markov_stream(n: int, V: int, seed: int) -> np.ndarray:
    """A second-order Markov chain where each pair of tokens allows only 3 next tokens."""
    rng = np.random.default_rng(0)  # the chain is fixed; `seed` draws the text
    allowed = rng.integers(0, V, (V, V, 3))
    weights = rng.dirichlet(np.ones(3), (V, V))
    draw = np.random.default_rng(seed)
    out = [0, 1]
    for _ in range(n - 2):
        a, b = out[-2], out[-1]
        out.append(int(allowed[a, b, draw.choice(3, p=weights[a, b])]))
    return np.array(out)


def test_lower_perplexity_than_unigram_on_held_out_text():
    V = 20
    train, test = markov_stream(20000, V, seed=1), markov_stream(2001, V, seed=2)
    model = NGramLM(vocab_size=V, order=3).fit(train)
    x, y = torch.from_numpy(test[:-1])[None], torch.from_numpy(test[1:])[None]
    ngram_ppl = F.cross_entropy(model(x).view(-1, V), y.view(-1)).exp().item()
    freq = (np.bincount(train, minlength=V) + 1) / (len(train) + V)  # add-one unigram
    unigram_ppl = float(np.exp(-np.log(freq[test[1:]]).mean()))
    assert ngram_ppl < 0.5 * unigram_ppl, (ngram_ppl, unigram_ppl)
    assert ngram_ppl < 3.5  # three next tokens per context: close to the chain's own entropy


def test_state_dict_round_trip_into_a_fresh_model():
    model = NGramLM(vocab_size=12, order=4).fit(random_stream(1500, 12, seed=7))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = NGramLM(vocab_size=12, order=4)
    assert not fresh.fitted
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.fitted
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert "bigram" not in model.state_dict() and "levels.0.total" not in model.state_dict()  # derived, not saved
    x = torch.from_numpy(random_stream(20, 12, seed=8)).view(2, 10)
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(RuntimeError, match="order 3 over 12"):
        NGramLM(vocab_size=12, order=3).load_state_dict(model.state_dict())


def test_errors_name_the_fix():
    with pytest.raises(RuntimeError, match="call model.fit"):
        NGramLM(vocab_size=5)(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="order must be 2, 3, 4 or 5"):
        NGramLM(vocab_size=5, order=6)
    with pytest.raises(ValueError, match="use order <= 4"):
        NGramLM(vocab_size=50257, order=5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\)"):
        NGramLM(vocab_size=5).fit(np.array([0, 1, 5]))


def test_generate():
    V = 20
    model = NGramLM(vocab_size=V, order=3).fit(markov_stream(5000, V, seed=3))
    prompt = torch.tensor([[0, 1], [2, 3]])
    greedy = model.generate(prompt, 6, temperature=0)
    idx = prompt
    for _ in range(6):  # the argmax loop over the full sequence
        idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, idx)
    draw = lambda: model.generate(prompt, 8, top_k=3, generator=torch.Generator().manual_seed(0))  # noqa: E731
    assert torch.equal(draw(), draw()) and draw().shape == (2, 10)
    eos = int(greedy[0, 2])  # the first greedy token of row 0 ends it at once
    stopped = model.generate(prompt[:1], 6, temperature=0, eos_id=eos)
    assert stopped.tolist() == [[0, 1, eos]]


def test_fit_a_million_tokens_quickly():
    V, n = 4096, 1_000_000
    stream = random_stream(n, V, seed=9)
    start = time.perf_counter()
    model = NGramLM(vocab_size=V, order=3).fit(stream)
    elapsed = time.perf_counter() - start
    assert int(model.levels[2].count.sum()) == n - 2  # every trigram counted once
    assert int(model.levels[1].count.sum()) == model.levels[2].count.numel()  # one per distinct trigram
    assert elapsed < 20, f"fit took {elapsed:.1f} s"  # measured 0.15-0.3 s on one idle core
