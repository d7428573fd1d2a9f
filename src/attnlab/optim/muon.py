"""Muon (Jordan et al., 2024): momentum SGD whose update for a weight matrix is orthogonalised, with AdamW for the rest.

Muon replaces each hidden matrix's momentum by the nearest semi-orthogonal matrix (U V^T of its SVD, approximated by
a few Newton-Schulz iterations), so every direction of the update moves at the same rate instead of the few largest
singular directions dominating. It is meant for the 2-D weights inside the network; input embeddings, the output
layer, biases and norm gains keep AdamW (as in Keller Jordan's and Moonshot's recipes). `param_groups` in
optim/groups.py sorts a model's parameters into exactly those groups ("decay" for the hidden matrices).

One optimizer object holds both rules, so Lightning's automatic optimisation, the lr schedules (they scale every
group's lr by the same factor) and checkpoints see a single optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

# The quintic iteration's coefficients from Jordan et al.: they push every singular value into ~[0.7, 1.2] in five
# steps, which is close enough to 1 for the update and much cheaper than an exact SVD.
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
_MUON_GROUP = "decay"  # param_groups' name for the weight matrices inside the network


def _is_muon(group: dict[str, Any]) -> bool:
    return group.get("name") == _MUON_GROUP


def orthogonalise(g: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately U V^T for g = U S V^T (g of shape (m, n)), by Newton-Schulz iteration."""
    a, b, c = _NS_COEFFICIENTS
    x = g / (g.norm() + eps)  # singular values now <= 1, where the iteration converges
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # iterate on the smaller Gram matrix (n, n)
    for _ in range(steps):
        gram = x @ x.T  # (m, m)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(Optimizer):
    """Muon for the parameter group named "decay" (2-D and up), AdamW for every other group.

    lr is Muon's learning rate; adam_lr the AdamW groups'. A matrix's update is scaled by sqrt(max(1, rows / cols))
    so tall matrices (an MLP's fc1 transposed, ...) get as large a per-entry step as square ones. Weight decay is
    decoupled (p <- p * (1 - lr * weight_decay)) in both rules, applied to the groups that do not set it to 0.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        *,
        adam_lr: float = 3e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
    ) -> None:
        for name, value in (("lr", lr), ("adam_lr", adam_lr), ("weight_decay", weight_decay)):
            if value < 0:
                raise ValueError(f"Muon {name} must be >= 0, got {value}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon momentum must be in [0, 1), got {momentum}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        betas=tuple(betas), eps=eps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if _is_muon(group):
                flat = [tuple(p.shape) for p in group["params"] if p.dim() < 2]
                if flat:
                    raise ValueError(f"Muon updates matrices only; group {group.get('name')!r} holds tensors of shape {flat}")
            else:
                group["lr"] = adam_lr
        if not any(_is_muon(group) for group in self.param_groups):
            raise ValueError(f"no parameter group named {_MUON_GROUP!r}, so Muon would update nothing: "
                             "the model has no hidden nn.Linear / nn.Conv / nn.RNN weight matrices, or does not "
                             "state its output layer (give it `def output_layer(self) -> nn.Module | None`, as every "
                             "model in attnlab.models does; see attnlab.optim.param_groups); else use optimizer=adamw")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (self._muon_step if _is_muon(group) else self._adamw_step)(group)
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        lr, momentum = group["lr"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - momentum)  # an exponential average of the gradients
            update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
            matrix = update.reshape(update.size(0), -1)  # a conv kernel (out, in, k, k) as (out, in * k * k)
            ortho = orthogonalise(matrix, group["ns_steps"]).view_as(p)
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(ortho, alpha=-lr * math.sqrt(max(1.0, matrix.size(0) / matrix.size(1))))

    def _adamw_step(self, group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            m_hat_scale = 1 / (1 - beta1 ** state["step"])
            v_hat_sqrt = (v / (1 - beta2 ** state["step"])).sqrt_().add_(eps)
            p.mul_(1 - lr * group["weight_decay"])
            p.addcdiv_(m, v_hat_sqrt, value=-lr * m_hat_scale)
