"""`OnnxModel`: a run's ONNX export (attnlab.serving.export) in an onnxruntime session, called with the tensors its
torch model takes and returning torch logits, so a server can use it in place of `load_model(run).model`:

    model = OnnxModel(run_dir)                  # <run>/export/model.onnx; int8=True: model.int8.onnx
    logits = model(x)                           # images (B, C, H, W) float32
    logits = model(input_ids, attention_mask)   # text classification (B, T); the mask bool or 0/1 integers
    logits = model(input_ids)                   # language model: (B, T, V); no KV cache (see export.NO_CACHE_NOTE)

Reads export.json for the inputs' names and dtypes and the longest sequence the model takes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnlab.errors import RunError
from attnlab.runs import require_run
from attnlab.serving.export import EXPORT_DIR, INFO_FILE, INT8_FILE, MODEL_FILE, TEXT, session

log = logging.getLogger("attnlab")
_DTYPES = {"float32": np.float32, "int64": np.int64}


class OnnxModel:
    """A run's exported model in onnxruntime (CPU), callable like the torch model; returns logits as a torch tensor."""

    def __init__(self, run_dir: str | Path, *, int8: bool = False, threads: int = 2) -> None:
        self.run_dir = require_run(run_dir)
        folder = self.run_dir / EXPORT_DIR
        self.path = folder / (INT8_FILE if int8 else MODEL_FILE)
        fix = f"run python scripts/export.py run={self.run_dir} format=onnx" + (" quantize=int8" if int8 else "")
        if not self.path.is_file() or not (folder / INFO_FILE).is_file():
            what = "int8 " if int8 else ""
            raise RunError(f"{self.run_dir} has no {what}ONNX export ({self.path} and {INFO_FILE}); {fix}")
        self.info: dict[str, Any] = json.loads((folder / INFO_FILE).read_text())
        if int8 and "int8" not in self.info:
            raise RunError(f"{self.path} is not the int8 file of the current export ({INFO_FILE} lists none); {fix}")
        source = self.run_dir / self.info["checkpoint"]
        if not source.is_file() or source.stat().st_mtime > self.path.stat().st_mtime:
            log.warning("%s was exported from %s, which is %s since; %s to serve the run's current weights",
                        self.path, source.name, "gone" if not source.is_file() else "rewritten", fix)
        self.family: str = self.info["family"]
        self.max_len: int | None = self.info.get("max_len")
        self.inputs: list[dict[str, Any]] = self.info["inputs"]
        self.session = session(self.path, threads)

    def __call__(self, *args: torch.Tensor | None, **kwargs: torch.Tensor | None) -> torch.Tensor:
        """Logits for the inputs, given as the torch model takes them (positionally or by name)."""
        names = [s["name"] for s in self.inputs]
        if len(args) > len(names) or set(kwargs) - set(names):
            raise TypeError(f"{self.family} model takes {', '.join(names)}; got {len(args)} positional and "
                            f"{sorted(kwargs)} named inputs")
        given = {**dict(zip(names, args)), **kwargs}
        if given.get(names[0]) is None:
            raise TypeError(f"{names[0]} is required")
        if self.family == TEXT and given.get("attention_mask") is None:
            given["attention_mask"] = torch.ones_like(given["input_ids"])  # every token real, as the torch models do
        if self.max_len is not None and given[names[0]].shape[1] > self.max_len:
            raise ValueError(f"sequence length {given[names[0]].shape[1]} exceeds max_len {self.max_len}; truncate "
                             f"the inputs to {self.max_len} tokens")
        feeds = {s["name"]: _array(given[s["name"]], _DTYPES[s["dtype"]]) for s in self.inputs}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def eval(self) -> OnnxModel:
        """Nothing to switch (an export is inference only); there so code written for a torch model runs unchanged."""
        return self

    def __repr__(self) -> str:
        return f"OnnxModel({self.path}, {self.family})"


def _array(tensor: torch.Tensor, dtype: type) -> np.ndarray:
    """A contiguous numpy array of the graph's dtype (a bool mask becomes 0/1 int64)."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)
