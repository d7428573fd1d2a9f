"""Run directories: manifest life cycle, path validation, safe checkpoint loading, history."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from attnlab import runs
from attnlab.errors import RunError
from attnlab.runs import read_history
from attnlab.tracking import HistoryLogger


def make_run(tmp_path):
    run = runs.Run(tmp_path / "run")
    run.start(OmegaConf.create({"seed": 3, "paths": {"output_dir": str(tmp_path / "run")}}), run_id="r1", group=None, root=tmp_path)
    return run


def test_manifest_life_cycle(tmp_path):
    run = make_run(tmp_path)
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["status"] == "running" and manifest["seed"] == 3 and manifest["versions"]["torch"]
    assert set(manifest["git"]) == {"commit", "dirty"}
    run.finish("failed", error=ValueError("loss is nan"))
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["status"] == "failed" and manifest["error"]["message"] == "loss is nan" and manifest["end"]
    resumed = run.resume()
    assert resumed["status"] == "running" and resumed["resumes"][0]["previous_status"] == "failed"
    run.finish("completed", metrics={"test/acc": torch.tensor(0.5), "val/loss": float("nan")})
    assert json.loads((run.dir / runs.METRICS).read_text()) == {"test/acc": 0.5, "val/loss": None}


def test_require_run_rejects_other_folders(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        runs.require_run(tmp_path / "nope")
    with pytest.raises(RunError, match="is not an attnlab run directory"):
        runs.require_run(tmp_path)
    assert runs.require_run(make_run(tmp_path).dir) == tmp_path / "run"


def test_checkpoints_load_safely(tmp_path):
    run_dir = make_run(tmp_path).dir
    with pytest.raises(RunError, match="no checkpoint"):
        runs.find_checkpoint(run_dir, "last")
    good = run_dir / runs.CHECKPOINTS / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, good)
    assert runs.find_checkpoint(run_dir, "best") == good  # no best yet: falls back to last
    assert runs.load_checkpoint(good)["epoch"] == 1
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match="cannot load checkpoint"):
        runs.load_checkpoint(garbage)
    code = tmp_path / "code.ckpt"
    torch.save({"state_dict": {}, "payload": HistoryLogger(tmp_path / "h.csv")}, code)  # an arbitrary object
    with pytest.raises(RunError, match="cannot load checkpoint"):
        runs.load_checkpoint(code)  # weights_only refuses to unpickle it


def test_history_logger_appends_and_reads_back(tmp_path):
    logger = HistoryLogger(tmp_path / "history.csv")
    logger.log_metrics({"train/loss_step": 2.0}, step=0)
    logger.log_metrics({"train/loss_step": 1.0, "val/acc": 0.5}, step=10)
    logger.finalize("success")
    HistoryLogger(tmp_path / "history.csv").log_metrics({"val/acc": 0.75}, step=20)  # a resumed run appends
    history = read_history(tmp_path / "history.csv")
    assert history == {"train/loss_step": [(0, 2.0), (10, 1.0)], "val/acc": [(10, 0.5), (20, 0.75)]}


def test_interruptions_are_told_apart_from_failures():
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from attnlab.train import _is_interrupt

    def raised_while_handling(inner: BaseException) -> SystemExit:
        try:
            try:
                raise inner
            except BaseException:
                raise SystemExit(1)  # what Lightning does after its graceful shutdown
        except SystemExit as err:
            return err

    assert _is_interrupt(KeyboardInterrupt()) and _is_interrupt(raised_while_handling(KeyboardInterrupt()))
    assert _is_interrupt(SIGTERMException()) and _is_interrupt(raised_while_handling(SIGTERMException()))
    assert not _is_interrupt(RuntimeError("nan loss")) and not _is_interrupt(raised_while_handling(ValueError()))
    assert not _is_interrupt(SystemExit(1))
