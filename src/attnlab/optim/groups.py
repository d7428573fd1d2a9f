"""Parameter groups: which tensors are hidden weight matrices, which are tables or the output layer, which are
biases and norms. Every optimizer config receives these groups (see tasks/base.Task.configure_optimizers)."""

from __future__ import annotations

from typing import Any

from torch import nn

# Modules whose 2-D (and up) weights multiply activations: Muon's "hidden matrices".
_MATMUL_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                   nn.ConvTranspose3d, nn.RNNBase, nn.MultiheadAttention)


_UNSTATED = object()  # the model does not say which module is its output layer


def output_layer(model: nn.Module) -> nn.Module | None | object:
    """The module the model states produces its output (`model.output_layer()`); None: it has none (counts);
    `_UNSTATED` for a model without the method (a plain nn.Module from a notebook)."""
    state = getattr(model, "output_layer", None)
    if not callable(state):
        return _UNSTATED
    layer = state()
    if layer is not None and not any(layer is m for m in model.modules()):
        raise ValueError(f"{type(model).__name__}.output_layer() returned a module that is not part of the model")
    return layer


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Three named groups: "decay" (weight matrices inside the network), "embedding" (embedding and position
    tables, the output layer: weight-decayed like matrices) and "no_decay" (biases and norm gains, which decaying
    only hurts, as in nanoGPT). AdamW and SGD treat the first two alike; Muon (optim/muon.py) orthogonalises only
    "decay". The output layer is the one the model states (`output_layer()`); a tied head is the embedding itself.

    A model that states no output layer gets no "decay" group: guessing (the last nn.Linear, say) picks a hidden
    layer in models whose output is a conv or whose head is registered early, and Muon would then orthogonalise the
    real output layer. AdamW and SGD are unaffected (they treat the groups alike); Muon refuses with the fix."""
    matmul = {id(p) for m in model.modules() if isinstance(m, _MATMUL_MODULES) for p in m.parameters(recurse=False)}
    head = output_layer(model)
    if head is _UNSTATED:
        matmul = set()
    elif head is not None:
        matmul -= {id(p) for p in head.parameters()}
    embedding_tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    params = [p for p in model.parameters() if p.requires_grad]  # shared (tied) tensors appear once
    groups = [
        {"params": [p for p in params if p.dim() >= 2 and id(p) in matmul and id(p) not in embedding_tables],
         "name": "decay"},
        {"params": [p for p in params if p.dim() >= 2 and (id(p) not in matmul or id(p) in embedding_tables)],
         "name": "embedding"},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]
