"""The FT-Transformer's feature tokenizer: linear and periodic (PLR) numeric embeddings, category lookups."""

import pytest
import torch

from attnlab.models.ft_transformer import FeatureTokenizer, FTTransformer


def test_periodic_tokens_have_the_shape_and_gradients_of_linear_ones():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(5, 3), torch.tensor([[0.0], [1.0], [-1.0], [2.0], [0.0]])], dim=1)  # 3 numeric, 1 category
    for kind in ("linear", "periodic"):
        tok = FeatureTokenizer(num_numeric=3, cat_cardinalities=[3], d_model=8, numeric_embedding=kind, n_frequencies=4,
                               frequency_scale=0.5)
        out = tok(x)
        assert out.shape == (5, 4, 8)
        out.square().sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tok.parameters())
    assert tok.frequencies.grad.abs().sum() > 0  # the frequencies are learned
    numeric = tok(x)[:, :3] - tok.bias[:3]
    assert (numeric >= -1e-6).all()  # ReLU(Linear(periodic)) before the token bias


def test_periodic_embeddings_fit_a_non_monotonic_feature_that_linear_ones_do_not():
    """y = cos(3x): a linear token is a line in x times one vector, the periodic one holds the curve itself."""
    losses = {}
    for kind in ("linear", "periodic"):
        torch.manual_seed(0)
        x = torch.linspace(-2, 2, 64)[:, None]
        y = torch.cos(3 * x)
        model = FTTransformer(num_numeric=1, num_outputs=1, d_model=8, n_layers=1, n_heads=2, dropout=0.0,
                              numeric_embedding=kind, n_frequencies=8, frequency_scale=0.5)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(100):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
        losses[kind] = loss.item()
    assert losses["periodic"] < 0.5 * losses["linear"], losses


def test_bad_embedding_settings_are_refused():
    with pytest.raises(ValueError, match="numeric_embedding='fourier'"):
        FTTransformer(num_numeric=2, num_outputs=1, numeric_embedding="fourier")
    with pytest.raises(ValueError, match="frequency_scale=0"):
        FTTransformer(num_numeric=2, num_outputs=1, numeric_embedding="periodic", frequency_scale=0)
