"""The data report (`python viz/plot.py data=<data config>`): markdown and figures that describe a data set before any
training. A data module with `report(out_dir: Path) -> str` writes its own (text: class balance, token lengths and
the share cut at max_len; image folders: class balance, samples per class, normalisation statistics); `describe`
is the fallback for the others (sizes, class balance and lengths where its datasets show them)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from attnlab.plots import _save as save

    return save(fig, path)


def class_balance(labels: Mapping[str, Tensor | np.ndarray], class_names: Sequence[str], out_dir: Path) -> str:
    """A markdown table of rows per class and split (count and share), and class_balance.png."""
    counts = {split: np.bincount(np.asarray(y, dtype=np.int64), minlength=len(class_names)) for split, y in labels.items()}
    lines = ["| class | " + " | ".join(counts) + " |", "| --- |" + " --- |" * len(counts)]
    for k, name in enumerate(class_names):
        cells = [f"{c[k]:,} ({100 * c[k] / max(c.sum(), 1):.1f}%)" for c in counts.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **all** | " + " | ".join(f"{c.sum():,}" for c in counts.values()) + " |")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(class_names) * len(counts) / 2 + 2), 3.2))
    width = 0.8 / max(len(counts), 1)
    x = np.arange(len(class_names))
    for i, (split, c) in enumerate(counts.items()):
        ax.bar(x + i * width - 0.4 + width / 2, c / max(c.sum(), 1), width, label=split)
    ax.set_xticks(x, [str(n) for n in class_names], rotation=30 if len(class_names) > 6 else 0, fontsize=8)
    ax.set_ylabel("share of split")
    ax.set_title("class balance")
    ax.legend(fontsize=8)
    _save(fig, out_dir / "class_balance.png")
    return "## Class balance\n\n" + "\n".join(lines) + "\n\n![class balance](class_balance.png)\n"


def length_section(lengths: Mapping[str, Tensor], max_len: int | None, out_dir: Path, *, unit: str = "tokens") -> str:
    """Length percentiles per split, the share longer than max_len, and lengths.png (a histogram)."""
    lines = [f"| split | texts | mean | median | p90 | p99 | max | longer than max_len={max_len} |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for split, n in lengths.items():
        n = np.asarray(n, dtype=np.float64)
        if not len(n):
            continue
        q = np.percentile(n, [50, 90, 99])
        cut = f"{100 * (n > max_len).mean():.1f}%" if max_len else "-"
        lines.append(f"| {split} | {len(n):,} | {n.mean():.0f} | {q[0]:.0f} | {q[1]:.0f} | {q[2]:.0f} | {n.max():.0f} | {cut} |")
        ax.hist(n, bins=60, range=(0, float(np.percentile(n, 99.5)) + 1), histtype="step", label=split, density=True)
    if max_len:
        ax.axvline(max_len, color="k", linestyle="--", linewidth=1, label=f"max_len={max_len}")
    ax.set_xlabel(f"length in {unit} (before truncation)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    _save(fig, out_dir / "lengths.png")
    return f"## Length in {unit}\n\n" + "\n".join(lines) + "\n\n![lengths](lengths.png)\n"


def text_report(labels: Mapping[str, Tensor], full_lengths: Mapping[str, Tensor], class_names: Sequence[str],
                max_len: int, out_dir: Path) -> str:
    """A text classification data set: class balance, token lengths (special tokens included) and the share cut."""
    return "\n".join([class_balance(labels, class_names, out_dir), length_section(full_lengths, max_len, out_dir)])


def samples_section(images: Tensor, labels: Tensor, class_names: Sequence[str], out_dir: Path, *,
                    per_class: int = 8) -> str:
    """samples.png: a row of training images per class (uint8 (N, C, H, W) or (N, H, W))."""
    rows = {}
    for k, name in enumerate(class_names):
        picked = images[torch.nonzero(labels == k).flatten()[:per_class]].float().div(255)
        if picked.dim() == 3:
            picked = picked.unsqueeze(1)
        if len(picked) < per_class:  # pad a small class with blanks so the grid stays rectangular
            picked = torch.cat([picked, torch.ones((per_class - len(picked), *picked.shape[1:]))])
        rows[str(name)] = picked.numpy()
    from attnlab.plots import image_grid

    image_grid(rows, out_dir / "samples.png", title=f"training images, the first {per_class} of each class")
    return (f"## Samples\n\nuint8 images of shape {tuple(images.shape[1:])} each; a row per class.\n\n"
            "![samples per class](samples.png)\n")


def image_report(splits: Mapping[str, Sequence[Tensor]], class_names: Sequence[str], pre: Any, out_dir: Path,
                 *, source: str) -> str:
    """An image classification data set: normalisation statistics, class balance, samples.png (a row per class)."""
    stats = (f"Images from `{source}`, {len(class_names)} classes. Normalisation (training split, pixels in [0, 1], per "
             f"channel): mean {list(pre.mean)}, std {list(pre.std)}; the model reads (pixels - mean) / std.\n")
    return "\n".join([stats, class_balance({s: v[1] for s, v in splits.items()}, class_names, out_dir),
                      samples_section(splits["train"][0], splits["train"][1], class_names, out_dir)])


def describe(datamodule: Any, out_dir: Path) -> str:
    """The fallback report of a data module without `report`: its facts, split sizes, and class balance, lengths or
    image samples where its datasets hold labels, lengths or uint8 images."""
    datamodule.setup()
    facts = datamodule.facts() if hasattr(datamodule, "facts") else {}
    shown = {k: v for k, v in facts.items() if isinstance(v, (int, float, str)) or k == "class_names"}
    lines = ["| fact | value |", "| --- | --- |",
             *(f"| {k} | {v} |" for k, v in shown.items()), "", "| split | rows |", "| --- | --- |"]
    labels, lengths, images = {}, {}, {}
    for split in ("train", "val", "test"):
        try:
            dataset = getattr(datamodule, f"{split}_dataloader")().dataset
        except Exception as err:  # a data module without this split
            log.info("no %s split (%s)", split, type(err).__name__)
            continue
        lines.append(f"| {split} | {len(dataset):,} |")
        tensors = getattr(dataset, "tensors", None)
        if getattr(dataset, "labels", None) is not None:
            labels[split] = dataset.labels
        elif tensors and len(tensors) > 1 and tensors[1].dim() == 1 and not tensors[1].is_floating_point():
            labels[split] = tensors[1]
        if getattr(dataset, "lengths", None) is not None:
            lengths[split] = dataset.lengths
        if tensors and tensors[0].dtype == torch.uint8 and tensors[0].dim() in (3, 4):
            images[split] = tensors
    sections = ["\n".join(lines) + "\n"]
    names = facts.get("class_names")
    if labels and names:
        sections.append(class_balance(labels, names, out_dir))
    if lengths:
        sections.append(length_section(lengths, facts.get("max_len"), out_dir))
    if "train" in images and names and "train" in labels:
        sections.append(samples_section(images["train"][0], labels["train"], names, out_dir))
    return "\n".join(sections)


def write_report(cfg: Any, out_dir: Path, *, title: str, command: str = "") -> Path:
    """Build `cfg.data` (no model), prepare and set it up, and write out_dir/report.md with its figures: the data
    module's own `report(out_dir)` when it has one, else `describe`. Returns the report's path."""
    from attnlab import build

    datamodule = build.make_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    body = datamodule.report(out_dir) if hasattr(datamodule, "report") else describe(datamodule, out_dir)
    head = f"# Data report: {title}\n\n" + (f"`{command}`\n\n" if command else "")
    path = out_dir / "report.md"
    path.write_text(head + body.rstrip() + "\n")
    return path
