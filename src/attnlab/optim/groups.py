"""Parameter groups: which tensors are hidden weight matrices, which are tables or the output layer, which are
biases and norms. Every optimizer config receives these groups (see tasks/base.Task.configure_optimizers)."""

from __future__ import annotations

from typing import Any

from torch import nn

# Modules whose 2-D (and up) weights multiply activations: Muon's "hidden matrices".
_MATMUL_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.RNNBase, nn.MultiheadAttention)


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Three named groups: "decay" (weight matrices inside the network), "embedding" (embedding and position
    tables, the output layer: weight-decayed like matrices) and "no_decay" (biases and norm gains, which decaying
    only hurts, as in nanoGPT). AdamW and SGD treat the first two alike; Muon (optim/muon.py) orthogonalises only
    "decay". The output layer is the last nn.Linear the model registers; a tied head is the embedding itself."""
    matmul = {id(p) for m in model.modules() if isinstance(m, _MATMUL_MODULES) for p in m.parameters(recurse=False)}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        matmul.discard(id(linears[-1].weight))
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
