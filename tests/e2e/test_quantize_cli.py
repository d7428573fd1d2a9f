"""scripts/quantize.py on a tiny HF GPT-2 run trained on generated stories: the report's rows and fields, int8 layers
really used, and the errors for a GPU-only method and for a folder that is no run."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.mark.heavy
def test_quantize_report_of_a_tiny_gpt2_run(lm_cli, tmp_path):
    lm_cli("app/train.py", "experiment=tinystories_hf_gpt2", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
           "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false")
    (run,) = list((lm_cli.results / "runs").iterdir())
    out = lm_cli("scripts/quantize.py", f"run={run}", "method=fp32,bf16,int8_dynamic,int8_selective", "new_tokens=6",
                 "val_windows=3", "rounds=1", "threads=1", "prompt=Lily saw")
    rows = json.loads((run / "quantize" / "report.json").read_text())
    assert [r["method"] for r in rows] == ["fp32", "bf16", "int8_dynamic", "int8_selective"]
    for row in rows:
        assert {"method", "size_mb", "val_ppl", "tokens_per_s", "threads", "int8_modules", "ppl_ratio"} <= set(row)
        assert row["size_mb"] > 0 and 1 < row["val_ppl"] < 1000 and row["tokens_per_s"] > 0 and row["threads"] == 1
        assert row["val_windows"] == 3 and row["new_tokens"] == 6
    fp32, bf16, dynamic, selective = rows
    assert (fp32["int8_modules"], bf16["int8_modules"], dynamic["int8_modules"], selective["int8_modules"]) == (0, 0, 4, 2)
    assert fp32["ppl_ratio"] == 1 and abs(dynamic["ppl_ratio"] - 1) < 0.05
    assert bf16["size_mb"] < 0.6 * fp32["size_mb"] and dynamic["size_mb"] < fp32["size_mb"]
    assert "| int8_dynamic |" in out.stdout and "report.json" in out.stdout

    if not torch.cuda.is_available():
        out = lm_cli("scripts/quantize.py", f"run={run}", "method=fp32,bnb_nf4", expect=2)
        assert "needs a CUDA GPU (bitsandbytes); this machine has none" in out.stderr and "Traceback" not in out.stderr
    out = lm_cli("scripts/quantize.py", f"run={tmp_path}", expect=2)
    assert "is not an attnlab run directory" in out.stderr and "Traceback" not in out.stderr
