"""bf16 on a CPU without bf16 matrix units is emulated (measured many times slower than fp32): training warns."""

import logging

import lightning as L
import pytest

from attnlab import train


@pytest.mark.parametrize("native, precision, warned", [(False, "bf16-mixed", True), (True, "bf16-mixed", False),
                                                       (None, "bf16-mixed", False), (False, "32-true", False)])
def test_bf16_on_a_cpu_without_bf16_units_warns(monkeypatch, caplog, native, precision, warned):
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: native)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    with caplog.at_level(logging.WARNING, logger="attnlab"):
        train._warn_emulated_bf16(trainer)
    assert ("emulated" in caplog.text) is warned

