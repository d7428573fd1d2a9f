"""ONNX export of a trained run, checked against PyTorch with onnxruntime before it is accepted; `OnnxModel` (in
attnlab.serving.onnx_model) serves it in place of the torch model.

    export_onnx(run_dir, quantize="int8")  ->  <run>/export/model.onnx, model.int8.onnx, export.json

Families (what the graph reads and returns; every other model is refused with a ConfigError):
    image_classification  CNN, ViT, MLPClassifier: x float32 (batch, C, H, W), pixels / 255 as the run's
                          preprocessing gives them -> logits (batch, num_classes)
    text_classification   RNNClassifier (RNN/LSTM/GRU, bidirectional), Encoder (BERT/RoBERTa/DistilBERT shapes):
                          input_ids int64 and attention_mask int64 (batch, sequence), 1 = real token, padding at the
                          end -> logits (batch, num_classes). int64, not bool: the 0/1 integers a tokenizer or a JSON
                          client produces, read by both model families unchanged (OnnxModel casts a bool mask)
    language_model        GPT, LSTMLM: input_ids int64 (batch, sequence) -> logits (batch, sequence, vocab_size).
                          Exported WITHOUT the key/value cache: a generation step through the export recomputes the
                          whole context (what `generate(use_cache=False)` does), so serve short contexts with it

Exporter: the TorchScript one (`torch.onnx.export(dynamo=False)`), not torch 2.13's default torch.export-based one.
Measured here (torch 2.13, onnxscript 0.7.2, onnxruntime 1.32): with dynamo=True the BERT-style encoder does not
export (its `bool(mask.all())` shortcut is a branch on tensor values, which torch.export refuses), and the BiLSTM
exports into a graph onnxruntime cannot run at any shape (an Expand with an invalid shape); it was also 4-8x slower
to export (6-13 s against about 1.5 s). The TorchScript exporter exports all seven models with dynamic batch and
sequence axes, within 1e-6 of PyTorch. Its price: it traces, so a Python branch on a tensor's value is frozen at the
example's value. The two in these models are harmless: the encoder's unmasked shortcut (the example has padding, so
the masked path is kept; on a batch without padding it computes the same) and the max_len checks (OnnxModel checks
lengths itself). That is why every export is run at several batch sizes and sequence lengths, with padding, and
refused when its logits differ from PyTorch's by more than FP32_TOLERANCE.

The RNN classifier traces to one ONNX LSTM/GRU/RNN node per layer and direction, which reads any length, and the
length-aware reversal of its backward direction is a gather, so its sequence axis really is dynamic (the check at
lengths 5, 17 and max_len confirms it; so does its `packed=true` variant, whose PackedSequence the exporter turns
into the RNN node's sequence lengths).

quantize="int8": onnxruntime's dynamic quantisation of the fp32 graph (weights of MatMul/Gemm, LSTM and embedding
Gathers stored int8, activations quantised at run time), checked the same way; its difference from PyTorch and top-1
agreement are recorded, not held to a bar. Convolutions stay float: dynamic int8 (ConvInteger) ran mnist_cnn 2.7-3x
slower than fp32 on an AVX2 AMD EPYC (batch 1: 3.2 ms against 1.2; batch 32: 99 against 33), and leaving them float
costs 0.19 MB of its 0.67 (fp32: 1.87). Convolutions want static quantisation, with calibration data.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.errors import AttnlabError, ConfigError
from attnlab.runs import load_model, require_run, write_json

log = logging.getLogger("attnlab")

EXPORT_DIR, MODEL_FILE, INT8_FILE, INFO_FILE = "export", "model.onnx", "model.int8.onnx", "export.json"
TOKENIZER_DIR = "tokenizer"  # where a text run's data module saves its tokenizer (ARTIFACT_DIR)
IMAGE, TEXT, LM = "image_classification", "text_classification", "language_model"
QUANTIZE = ("int8",)
DEFAULT_OPSET = 17  # LayerNormalization is one node from 17 on; nothing newer is needed
OPSETS = range(14, 21)  # 14: scaled_dot_product_attention's first; 20: the TorchScript exporter's last
FP32_TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| logit accepted for fp32; measured: below 1e-6
CHECK_BATCHES, CHECK_LENGTHS = (1, 3, 8), (5, 17)  # and the run's max_len
NO_CACHE_NOTE = ("exported without the KV cache: each generation step recomputes the whole context (up to max_len "
                 "tokens), as generate(use_cache=False) does")


class ExportCheckError(AttnlabError):
    """The exported graph does not compute what the PyTorch model computes."""


def _families() -> dict[type, str]:
    from attnlab.models import cnn, encoder, gpt, lstm_lm, mlp, rnn, vit

    return {cnn.CNN: IMAGE, vit.ViT: IMAGE, mlp.MLPClassifier: IMAGE, rnn.RNNClassifier: TEXT,
            encoder.Encoder: TEXT, gpt.GPT: LM, lstm_lm.LSTMLM: LM}


def family_of(model: nn.Module) -> str:
    """The model's family (IMAGE, TEXT or LM); a ConfigError naming what is supported for any other model."""
    families = _families()
    family = next((fam for cls, fam in families.items() if isinstance(model, cls)), None)
    if family is None:
        supported = ", ".join(f"{cls.__name__} ({fam})" for cls, fam in families.items())
        raise ConfigError(f"ONNX export supports {supported}; this run's model is {type(model).__name__} (seq2seq, "
                          "summarisation, Hugging Face, n-gram and autoencoder runs are not exported; a Hugging Face "
                          "causal LM can be saved in its own format with scripts/export_hf.py)")
    return family


def length_limit(model: nn.Module) -> int | None:
    """The longest sequence the model reads (its position table's max_len), or None when it reads any length."""
    limits = [m.max_len for m in model.modules() if isinstance(getattr(m, "max_len", None), int)]
    return min(limits) if limits else None


def signature(family: str, facts: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's inputs and outputs: name, dtype and shape, the dynamic dimensions named ("batch", "sequence")."""
    if family == IMAGE:
        side = facts["image_size"]
        return ([{"name": "x", "dtype": "float32", "shape": ["batch", facts["in_channels"], side, side]}],
                [{"name": "logits", "dtype": "float32", "shape": ["batch", facts["num_classes"]]}])
    ids = {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}
    if family == TEXT:
        return ([ids, {**ids, "name": "attention_mask"}],
                [{"name": "logits", "dtype": "float32", "shape": ["batch", facts["num_classes"]]}])
    return [ids], [{"name": "logits", "dtype": "float32", "shape": ["batch", "sequence", facts["vocab_size"]]}]


def sample_inputs(family: str, facts: dict[str, Any], batch: int, length: int, *, preprocess: Any = None,
                  generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Random inputs of the family: normalised images, or token ids (B, T). Text: the first row is T real tokens,
    every other row fewer (padded with pad_id and masked), so a batch of one has no padding and larger ones do."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if family == IMAGE:
        side = facts["image_size"]
        pixels = torch.randint(0, 256, (batch, facts["in_channels"], side, side), generator=g, dtype=torch.uint8)
        return [preprocess(pixels) if callable(preprocess) else pixels.float() / 255]
    ids = torch.randint(0, facts["vocab_size"], (batch, length), generator=g)  # (B, T)
    if family == LM:
        return [ids]
    lengths = torch.randint(1, max(length, 2), (batch,), generator=g).clamp(max=length)
    lengths[0] = length
    mask = torch.arange(length)[None] < lengths[:, None]  # (B, T): True = real token
    return [ids.masked_fill(~mask, facts.get("pad_id") or 0), mask.long()]


def check_shapes(family: str, facts: dict[str, Any], limit: int | None) -> list[tuple[int, int | None]]:
    """(batch, length) pairs to compare at: CHECK_BATCHES x (CHECK_LENGTHS and max_len); images have no length."""
    if family == IMAGE:
        return [(b, None) for b in CHECK_BATCHES]
    bounds = [x for x in (facts.get("max_len"), limit) if x]
    longest = min(bounds) if bounds else max(CHECK_LENGTHS)
    lengths = sorted({min(t, longest) for t in (*CHECK_LENGTHS, longest)})
    return [(b, t) for b in CHECK_BATCHES for t in lengths]


class _Positional(nn.Module):
    """The model's forward with its tensors as positional arguments only, as the TorchScript exporter passes them
    (it would hand GPT's keyword-only `cache` a tensor). It calls `forward` itself, so a model compiled in place
    (`compile=true`) is traced through its Python code, not through torch.compile."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model.forward(*inputs)


def trace_to_onnx(model: nn.Module, example: list[torch.Tensor], path: Path, inputs: list[dict[str, Any]],
                  outputs: list[dict[str, Any]], opset: int) -> None:
    """torch.onnx.export (TorchScript) with the named dimensions of inputs/outputs dynamic."""
    axes = {s["name"]: {i: d for i, d in enumerate(s["shape"]) if isinstance(d, str)} for s in (*inputs, *outputs)}
    with warnings.catch_warnings(), torch.no_grad():
        # Tracer warnings name the Python branches frozen at the example (see the module docstring); the exporter's
        # deprecation notice is about dynamo=False, chosen on purpose. The multi-shape check is what guards.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # The LSTM warning fears a batch size frozen into h0/c0; ours are built from the input's shape (checked).
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        torch.onnx.export(_Positional(model).eval(), tuple(example), str(path), dynamo=False, opset_version=opset,
                          input_names=[s["name"] for s in inputs], output_names=[s["name"] for s in outputs],
                          dynamic_axes=axes, do_constant_folding=True)


def session(path: Path, threads: int = 2) -> Any:
    """An onnxruntime CPU session on path with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    # Idle threads sleep instead of spinning: spinning ones hold the cores that torch, the tokenizer or a server's
    # other requests need (on 2 cores, eager torch next to a spinning session ran many times slower).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare(path: Path, model: nn.Module, cases: list[list[torch.Tensor]], names: list[str]) -> dict[str, float]:
    """Max |onnxruntime - PyTorch| over every logit of every case, and the share of predictions (argmax over the
    last axis: per example, or per position for a language model) on which they agree. PyTorch runs the model's
    eager forward, the code that was traced (a model compiled in place would recompile for every shape)."""
    eager = _Positional(model)
    sess = session(path)
    graph_inputs = [i.name for i in sess.get_inputs()]
    if graph_inputs != names:
        raise ExportCheckError(f"{path.name} reads {graph_inputs}, not {names}: tracing dropped an input the example "
                               "did not use (a text example without padding leaves the mask unread)")
    worst, agree, total = 0.0, 0, 0
    for inputs in cases:
        ref = eager(*inputs)
        try:
            out = torch.from_numpy(sess.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0])
        except Exception as err:  # onnxruntime's own errors: a shape the trace froze fails at another one
            raise ExportCheckError(f"{path.name} fails in onnxruntime at inputs {[tuple(t.shape) for t in inputs]}: "
                                   f"{' '.join(str(err).split())[:300]}") from None
        if out.shape != ref.shape:
            raise ExportCheckError(f"{path.name} returned logits of shape {tuple(out.shape)} where PyTorch returns "
                                   f"{tuple(ref.shape)} (inputs {[tuple(t.shape) for t in inputs]})")
        worst = max(worst, float((out - ref).abs().max()))
        agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
        total += ref.argmax(-1).numel()
    return {"max_abs_diff": worst, "top1_agreement": agree / total}


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic int8 quantisation of the fp32 graph, convolutions left float (see the module docstring);
    Gemm is rewritten to MatMul to be quantised."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    with _quiet_root_logger():
        quantize_dynamic(source, target, weight_type=QuantType.QInt8,
                         op_types_to_quantize=[op for op in IntegerOpsRegistry if op != "Conv"])


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantiser logs a line per tensor through the root logger, and its first `logging.warning` would
    configure logging for the whole process (basicConfig): errors only, and a handler so nothing gets configured."""
    root, null = logging.getLogger(), logging.NullHandler()
    level = root.level
    root.addHandler(null)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(null)
        root.setLevel(level)


def tokenizer_files(run_dir: Path) -> list[str]:
    """The run's tokenizer files, relative to the run directory (none for an image run)."""
    folder = run_dir / TOKENIZER_DIR
    return sorted(str(p.relative_to(run_dir)) for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def check_options(quantize: str | None, opset: int | None) -> int:
    """Validate the options before loading anything; returns the opset to use."""
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError(f"unknown quantize={quantize!r}; choose one of: {', '.join(QUANTIZE)} (or none: fp32 only)")
    opset = DEFAULT_OPSET if opset is None else opset
    if opset not in OPSETS:
        raise ConfigError(f"opset {opset} is out of range; choose {OPSETS.start}-{OPSETS.stop - 1} "
                          f"(default {DEFAULT_OPSET})")
    return opset


def export_onnx(run_dir: str | Path, *, ckpt: str | Path = "best", quantize: str | None = None,
                opset: int | None = None) -> Path:
    """Export a run's model to <run>/export/model.onnx (and model.int8.onnx), check it against PyTorch with
    onnxruntime at several shapes and write export.json; returns the fp32 file. ExportCheckError if the fp32 logits
    differ by more than FP32_TOLERANCE (nothing is kept), ConfigError for a model that is not exported."""
    opset = check_options(quantize, opset)
    loaded = load_model(require_run(run_dir), ckpt)
    model, facts, run = loaded.model, loaded.facts, loaded.run_dir
    family = family_of(model)
    inputs, outputs = signature(family, facts)
    names = [s["name"] for s in inputs]
    limit = length_limit(model) if family != IMAGE else None
    shapes = check_shapes(family, facts, limit)
    g = torch.Generator().manual_seed(0)
    cases = [sample_inputs(family, facts, b, t or 0, preprocess=loaded.preprocess, generator=g) for b, t in shapes]
    # The example: batch 2 (its second row padded) at a length the check does not use, so nothing it freezes passes.
    example = sample_inputs(family, facts, 2, min(11, max(t or 0 for _, t in shapes)), preprocess=loaded.preprocess,
                            generator=torch.Generator().manual_seed(1))
    folder = run / EXPORT_DIR
    folder.mkdir(exist_ok=True)
    fp32, int8, unchecked = folder / MODEL_FILE, folder / INT8_FILE, folder / "model.unchecked.onnx"
    try:
        trace_to_onnx(model, example, unchecked, inputs, outputs, opset)
        fp32_check = compare(unchecked, model, cases, names)
        if fp32_check["max_abs_diff"] > FP32_TOLERANCE:
            raise ExportCheckError(f"{run}: onnxruntime's logits differ from PyTorch's by "
                                   f"{fp32_check['max_abs_diff']:.3g} (> {FP32_TOLERANCE}) at (batch, length) "
                                   f"{shapes}; the export was not kept. A Python branch on tensor values or on a "
                                   "shape in the model's forward is the usual cause")
        unchecked.replace(fp32)
    finally:
        unchecked.unlink(missing_ok=True)
    int8.unlink(missing_ok=True)  # an int8 file from an earlier export would not match this one
    info = {"family": family, "checkpoint": _relative(loaded.checkpoint, run), "opset": opset,
            "exporter": "torch.onnx.export (TorchScript, dynamo=False)", "versions": versions(), "inputs": inputs,
            "outputs": outputs, "max_len": limit, "checked_shapes": [list(case[0].shape) for case in cases],
            "tolerance": FP32_TOLERANCE, **fp32_check, "files": {"fp32": _file(fp32)},
            "tokenizer_files": tokenizer_files(run)}
    if family == LM:
        info["note"] = NO_CACHE_NOTE
    if quantize == "int8":
        quantize_int8(fp32, int8)
        info["int8"] = {**_file(int8), **compare(int8, model, cases, names),
                        "method": "onnxruntime quantize_dynamic: QInt8 weights, activations quantised at run time; "
                                  "convolutions float"}
    write_json(folder / INFO_FILE, info)
    log.info("exported %s (%s) to %s: max |diff| %.2g over %d shapes", run, loaded.checkpoint.name, fp32,
             fp32_check["max_abs_diff"], len(shapes))
    return fp32


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _file(path: Path) -> dict[str, Any]:
    return {"file": path.name, "size_bytes": path.stat().st_size}
