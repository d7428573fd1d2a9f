"""Optimizers and parameter groups: Muon's orthogonalisation, its AdamW half against torch's, the group split."""

import io

import pytest
import torch
from torch import nn

from attnlab.models.autoencoder import ConvAutoencoder
from attnlab.models.gpt import GPT
from attnlab.models.lstm_lm import LSTMLM
from attnlab.optim import param_groups
from attnlab.optim.muon import Muon, orthogonalise


def _names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32)])
def test_orthogonalise_brings_every_singular_value_near_one(shape):
    gen = torch.Generator().manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=gen))
    g = u @ torch.diag(torch.logspace(-1, 1, k)) @ v.T  # singular values 0.1 ... 10
    s = torch.linalg.svdvals(orthogonalise(g))
    assert s.min() > 0.6 and s.max() < 1.25, s  # the quintic iteration's band: a 100x spread squeezed to < 2x


def test_gpt_groups_put_tables_and_output_layer_with_adamw():
    tied = GPT(vocab_size=50, max_len=8, d_model=16, n_layers=2, n_heads=2, positions="learned")
    decay, embedding, no_decay = param_groups(tied)
    assert [g["name"] for g in (decay, embedding, no_decay)] == ["decay", "embedding", "no_decay"]
    assert _names(tied, embedding) == {"tok_embed.weight", "pos.pos"}  # the tied head is the embedding
    assert all(n.startswith("blocks.") and n.endswith("weight") for n in _names(tied, decay))
    assert len(_names(tied, decay)) == 2 * 5  # q, kv, out, fc1, fc2 per block
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])

    untied = GPT(vocab_size=50, max_len=8, d_model=16, n_layers=2, n_heads=2, tie_weights=False)
    assert "lm_head.weight" in _names(untied, param_groups(untied)[1])
    total = sum(len(g["params"]) for g in param_groups(untied))
    assert total == len(list(untied.parameters()))  # every parameter in exactly one group


def test_recurrent_weights_are_matrices():
    model = LSTMLM(vocab_size=50, d_embed=8, d_hidden=16, n_layers=2)
    decay = _names(model, param_groups(model)[0])
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l1"} <= decay


def test_autoencoder_output_conv_is_not_orthogonalised():
    """The output layer is the one the model states (its final conv), not the last nn.Linear it registers
    (the decoder's input Linear, a hidden matrix)."""
    model = ConvAutoencoder(in_channels=1, image_size=28, latent_dim=8, channels=(4, 8))
    groups = {g["name"]: _names(model, g) for g in param_groups(model)}
    out_conv = f"decoder.{len(model.decoder) - 2}.weight"
    assert isinstance(model.decoder[-2], nn.Conv2d) and isinstance(model.decoder[0], nn.Linear)
    assert out_conv in groups["embedding"] and out_conv not in groups["decay"]
    # Hidden matrices: both bottleneck Linears, a hidden conv and a hidden transposed conv.
    assert {"encoder.5.weight", "decoder.0.weight", "decoder.3.0.weight", "decoder.4.0.weight"} <= groups["decay"]


def test_a_model_that_states_no_output_layer_trains_with_adamw_and_is_refused_by_muon():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    groups = param_groups(model)
    assert "decay" not in {g["name"] for g in groups}  # no guess at which Linear is the output
    assert sum(len(g["params"]) for g in groups) == 4
    torch.optim.AdamW(groups, lr=1e-3)
    with pytest.raises(ValueError, match="output_layer"):
        Muon(param_groups(model))


class _Regressor(nn.Sequential):
    def output_layer(self) -> nn.Module:
        return self[-1]


def _quadratic(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = _Regressor(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(64, 8)
    return model, x, x @ torch.randn(8, 4)


def _train(model, optimizer, x, y, steps):
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_adamw_half_matches_torch_adamw():
    """With Muon's lr at 0 the matrices stay put and the other groups must follow torch's AdamW exactly."""
    ours, x, y = _quadratic(0)
    ref, _, _ = _quadratic(0)
    opt = Muon(param_groups(ours), lr=0.0, adam_lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    ref_groups = [g for g in param_groups(ref) if g["name"] != "decay"]
    for g in param_groups(ref):
        if g["name"] == "decay":
            for p in g["params"]:
                p.requires_grad_(False)
    ref_opt = torch.optim.AdamW(ref_groups, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    assert _train(ours, opt, x, y, 5) == pytest.approx(_train(ref, ref_opt, x, y, 5), rel=1e-5)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_muon_trains_and_its_state_reloads_with_weights_only():
    model, x, y = _quadratic(1)
    opt = Muon(param_groups(model), lr=0.02, adam_lr=3e-3)
    losses = _train(model, opt, x, y, 60)
    assert losses[-1] < 0.3 * losses[0]
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    # A copy restored from the checkpoint takes the same next steps as the original.
    clone, _, _ = _quadratic(1)
    clone.load_state_dict(saved["model"])
    clone_opt = Muon(param_groups(clone), lr=0.02, adam_lr=3e-3)
    clone_opt.load_state_dict(saved["opt"])
    assert _train(clone, clone_opt, x, y, 3) == pytest.approx(_train(model, opt, x, y, 3), rel=1e-6)


def test_muon_needs_a_matrix_group():
    model, _, _ = _quadratic(0)
    with pytest.raises(ValueError, match="Muon would update nothing"):
        Muon(model.parameters())
    with pytest.raises(ValueError, match="matrices only"):
        Muon([{"params": [model[0].bias], "name": "decay"}])


def test_muon_refuses_a_model_without_torch_matrices():
    """HF GPT-2 multiplies with its own Conv1D: nothing for Muon, and the error says what to use instead."""
    from attnlab.models.hf import HFCausalLM

    model = HFCausalLM(vocab_size=100, max_len=16, n_layer=1, n_embd=32, n_head=2)
    assert [g["name"] for g in param_groups(model)] == ["embedding", "no_decay"]
    with pytest.raises(ValueError, match="use optimizer=adamw"):
        Muon(param_groups(model))
