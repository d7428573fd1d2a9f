"""GPT-2 fine-tuning as users run it, on generated SciTLDR / DialogSum files with GPT-2's real tokenizer: every
experiment under fast_dev_run (a tiny GPT-2 from scratch), then pretrain_gpt2 -> scitldr_lora base=<that run> ->
validate -> generate."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

EXPERIMENTS = ["scitldr_full", "scitldr_lora", "scitldr_prompt", "scitldr_prefix", "scitldr_ia3"]
TINY = ["++model.n_layer=1", "++model.n_embd=16", "++model.n_head=2"]
SMALL_DATA = ["++data.max_summary_len=12", "++task.val_generate=4"]


def runs_of(results: Path) -> list[Path]:
    return sorted(p.parent for p in results.rglob("metrics.json"))


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_gpt2_experiment_fast_dev_run(sum_cli):
    sum_cli("app/train.py", "-m", f"experiment={','.join(EXPERIMENTS)}", "++base=null", *TINY, *SMALL_DATA,
            "trainer.fast_dev_run=true")
    sum_cli("app/train.py", "experiment=pretrain_gpt2", *TINY, "data.max_len=32", "data.val_windows=2",
            "++task.sample_tokens=4", "trainer.fast_dev_run=true")
    found = {OmegaConf.load(run / "config.yaml").name: run for run in runs_of(sum_cli.results)}
    assert set(found) == {*EXPERIMENTS, "pretrain_gpt2"}, found
    for name, run in found.items():
        metrics = read(run / "metrics.json")
        if name == "pretrain_gpt2":
            assert metrics["test/ppl"] > 1
            continue
        for key in ("test/rouge1", "test/rouge2", "test/rougeL", "test/rougeLsum", "test/lead_rougeL",
                    "test/rougeL/dialogsum", "trainable_params", "total_params"):
            assert key in metrics, (run, key)
        assert 0 <= metrics["test/rougeL"] <= 100 and metrics["test/lead_rougeL"] > 0
        share = metrics["trainable_params"] / metrics["total_params"]
        assert share == 1.0 if name == "scitldr_full" else share < 0.2, (name, share)


def test_pretrain_then_lora_from_the_run_then_validate_and_generate(sum_cli):
    sum_cli("app/train.py", "experiment=pretrain_gpt2", *TINY, "data.max_len=128", "data.val_fraction=0.25",
            "data.val_windows=2", "++task.sample_tokens=4", "trainer.max_steps=4", "trainer.val_check_interval=2")
    (base,) = runs_of(sum_cli.results)
    sum_cli("app/train.py", "experiment=scitldr_lora", f"base={base}", *SMALL_DATA, "trainer.max_steps=3",
            "trainer.val_check_interval=3", "hydra.run.dir=${paths.results_dir}/lora")
    run = sum_cli.results / "lora"
    assert (base / "hf" / "config.json").is_file() and (base / "hf" / "tokenizer.json").is_file()
    metrics = read(run / "metrics.json")
    assert 0 < metrics["trainable_params"] < 0.05 * metrics["total_params"]
    # The checkpoint holds the adapter's tensors only; the adapter is also saved in peft's format.
    ckpt = next((run / "checkpoints").glob("best*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert state and all("lora_" in key for key in state)
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "plots" / "summaries_scitldr.txt").read_text().count("\n") == 12

    sum_cli("val/validate.py", f"run={run}")
    report = read(run / "validation" / "test.json")["metrics"]
    for key in ("test/rougeL", "test/rouge1", "test/loss", "test/rougeL/dialogsum"):
        assert report[key] == pytest.approx(metrics[key], abs=1e-4), key
    out = sum_cli("app/generate.py", f"run={run}", "prompt='We propose a new model. It learns graphs.'", "num_beams=2")
    assert "--- summary 1 ---" in out.stdout


def test_a_base_that_does_not_exist_is_refused_clearly(sum_cli):
    out = sum_cli("app/train.py", "experiment=scitldr_lora", f"base={sum_cli.results / 'nothing'}", *SMALL_DATA,
                  "trainer.fast_dev_run=true", expect=None)
    assert out.returncode != 0 and "no such folder" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
