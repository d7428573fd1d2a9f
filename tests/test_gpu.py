"""The GPU tier (`-m gpu`, skipped without CUDA; scripts/gpu_check.sh runs it): mixed precision and decoding on a CUDA
device agree with fp32 and with the CPU. The bf16 check also runs on the CPU, so its logic is tested everywhere.
And scripts/gpu_check.sh stops at once where there is no GPU."""

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnlab.models.gpt import GPT

REPO = Path(__file__).resolve().parents[1]
V, T = 128, 64
ON_CUDA = pytest.param("cuda", marks=pytest.mark.gpu)


def small_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=V, max_len=T, d_model=128, n_layers=2, n_heads=4, positions="rotary", activation="swiglu", **kw)


def windows(device: str, B: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(1)).to(device)
    return ids[:, :-1], ids[:, 1:]


def loss_and_grads(model: GPT, x: torch.Tensor, y: torch.Tensor, *, bf16: bool) -> tuple[float, torch.Tensor]:
    """One training step's loss and flattened gradients, under bf16 autocast as Lightning's bf16-mixed runs it."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten().float() for p in model.parameters()])


@pytest.mark.parametrize("device", ["cpu", ON_CUDA])
def test_a_bf16_training_step_matches_fp32_loosely(device):
    model = small_gpt().to(device)
    x, y = windows(device)
    loss32, grads32 = loss_and_grads(model, x, y, bf16=False)
    loss16, grads16 = loss_and_grads(model, x, y, bf16=True)
    assert abs(loss16 - loss32) < 0.01 * loss32, (loss16, loss32)
    assert F.cosine_similarity(grads16, grads32, dim=0) > 0.99
    assert torch.isfinite(grads16).all()


@pytest.mark.gpu
def test_fp32_on_cuda_equals_the_cpu():
    cpu = small_gpt()
    cuda = copy.deepcopy(cpu).cuda()
    x, y = windows("cpu")
    loss_cpu, grads_cpu = loss_and_grads(cpu, x, y, bf16=False)
    loss_cuda, grads_cuda = loss_and_grads(cuda, x.cuda(), y.cuda(), bf16=False)
    assert abs(loss_cuda - loss_cpu) < 1e-4
    torch.testing.assert_close(grads_cuda.cpu(), grads_cpu, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
def test_kv_cache_decoding_on_cuda_equals_recomputation():
    model = small_gpt().cuda().eval()
    prompt = windows("cuda", B=3)[0][:, :5]
    cached = model.generate(prompt, 40, temperature=0, use_cache=True)
    assert cached.shape == (3, 45) and cached.is_cuda
    assert torch.equal(cached, model.generate(prompt, 40, temperature=0, use_cache=False))
    with torch.no_grad():  # the logits behind the tokens, step by step through the cache, against one full pass
        cache = model.new_cache()
        steps = [model(cached[:, :5], cache=cache)] + [model(cached[:, t : t + 1], cache=cache) for t in range(5, 44)]
        torch.testing.assert_close(torch.cat(steps, dim=1), model(cached[:, :44]), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here: the check would run for minutes")
def test_gpu_check_stops_at_once_without_cuda():
    start = time.monotonic()
    out = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "gpu_check: no CUDA GPU visible to torch" in out.stderr and "CPU-only build" in out.stderr
    assert "== environment" not in out.stdout and "tokens/s" not in out.stdout  # nothing else ran
    assert time.monotonic() - start < 60
