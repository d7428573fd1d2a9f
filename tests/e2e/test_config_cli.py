"""Overrides as users type them, through the real command line (`dry_run=true` builds everything, trains nothing):
Lightning Trainer arguments, typos, and switching a group away from an experiment's choice."""

import json

import pytest

pytestmark = pytest.mark.slow

COMMON_TRAINER = ["trainer.val_check_interval=0.5", "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=1.0",
                  "trainer.log_every_n_steps=10", "trainer.limit_train_batches=0.1", "trainer.limit_val_batches=5",
                  "trainer.limit_test_batches=5", "trainer.check_val_every_n_epoch=2", "trainer.max_steps=100"]


def test_common_trainer_arguments_need_no_plus(cli):
    cli("app/train.py", "dry_run=true", *COMMON_TRAINER)


@pytest.mark.parametrize("args, message", [
    (["trainer.benchmark=true"], "trainer.benchmark is a Lightning Trainer argument attnlab sets no default for; "
                                 "add it with a plus: +trainer.benchmark=true"),
    (["trainer.max_epoch=3"], "trainer.max_epoch is no Lightning Trainer argument; did you mean trainer.max_epochs "),
    (["model.dropoutt=0.1"], "model.dropoutt is not in the config; did you mean model.dropout?"),
    (["monitor.metric=val/foo"], "monitor.metric=val/foo: the task states no direction for it"),
])
def test_an_unknown_key_names_the_fix_in_one_line(cli, args, message):
    out = cli("app/train.py", "dry_run=true", *args, expect=2)
    assert message in out.stderr and "Traceback" not in out.stderr and "not in struct" not in out.stderr, out.stderr


@pytest.mark.heavy
def test_switching_an_experiments_optimizer_names_the_stale_key_then_works(lm_cli):
    out = lm_cli("app/train.py", "experiment=tinystories_gpt", "optimizer=adamw", "dry_run=true", expect=2)
    assert out.stderr.strip().splitlines()[-1] == ("error: optimizer.adam_lr was set by experiment=tinystories_gpt for "
                                                   "optimizer=muon; for optimizer=adamw: ~optimizer.adam_lr")
    out = lm_cli("app/train.py", "experiment=tinystories_gpt", "optimizer=adamw", "~optimizer.adam_lr", "dry_run=true")
    assert "they apply to optimizer=adamw too" in out.stdout + out.stderr  # lr=0.02 was Muon's: the user is told


@pytest.mark.heavy
def test_no_validation_callbacks_step_aside(cli):
    """limit_val_batches=0 turns validation off: early stopping and the best checkpoint do not look for val/acc."""
    out = cli("app/train.py", "experiment=mnist_cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
              "trainer.limit_val_batches=0", "trainer.limit_test_batches=2")
    assert "validation is off (trainer.limit_val_batches=0)" in out.stdout + out.stderr
    (run,) = (cli.results / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test/acc" in metrics and not any(k.startswith("val/") for k in metrics)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    out = cli("app/train.py", "experiment=mnist_cnn", "scheduler=plateau", "trainer.limit_val_batches=0", "dry_run=true", expect=2)
    assert "scheduler=plateau steps on val/acc" in out.stderr
