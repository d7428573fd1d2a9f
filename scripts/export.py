"""Export a trained run to ONNX, checked against PyTorch with onnxruntime (attnlab.serving.export).

    python scripts/export.py run=<run dir> [format=onnx] [quantize=int8] [ckpt=best] [opset=17]

Writes <run>/export/model.onnx (and model.int8.onnx with quantize=int8) and export.json (inputs, outputs, versions,
the shapes checked and the largest difference from PyTorch's logits), then prints the files' sizes and the
differences. The export is refused if its fp32 logits differ from PyTorch's by more than 1e-4. Serve it with
`attnlab.serving.onnx_model.OnnxModel(run)`. Bad arguments, runs or models: one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from attnlab.cli import script_fail, script_settings

DEFAULTS: dict[str, Any] = {"run": None, "format": "onnx", "quantize": None, "ckpt": "best", "opset": None}
FORMATS = ("onnx",)


def parse(settings: list[str]) -> dict[str, Any]:
    """key=value settings over DEFAULTS; opset is an int."""
    args = script_settings(settings, DEFAULTS, usage="python scripts/export.py run=<run dir> format=onnx")
    if args["format"] not in FORMATS:
        script_fail(f"format={args['format']}: only {', '.join(FORMATS)} is supported")
    if args["quantize"] in ("", "none"):
        args["quantize"] = None
    if args["opset"] is not None:
        try:
            args["opset"] = int(args["opset"])
        except ValueError:
            script_fail(f"opset={args['opset']}: expected an integer, e.g. opset=17")
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", help="key=value: " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items()))
    args = parse(parser.parse_args().settings)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("attnlab").setLevel(logging.INFO)
    # Imported after the arguments are checked: a bad argument answers before torch loads.
    from attnlab.errors import AttnlabError
    from attnlab.runs import read_json
    from attnlab.serving.export import INFO_FILE, export_onnx

    try:
        path = export_onnx(args["run"], ckpt=args["ckpt"], quantize=args["quantize"], opset=args["opset"])
    except AttnlabError as err:
        script_fail(str(err))
    info = read_json(path.parent / INFO_FILE)
    print(f"\n{info['family']}, {info['checkpoint']}, opset {info['opset']}, checked at {len(info['checked_shapes'])} "
          f"shapes against PyTorch")
    print(f"  fp32  {path}  {info['files']['fp32']['size_bytes'] / 1e6:.2f} MB  max |diff| {info['max_abs_diff']:.2g}")
    if "int8" in info:
        q = info["int8"]
        print(f"  int8  {path.parent / q['file']}  {q['size_bytes'] / 1e6:.2f} MB  max |diff| {q['max_abs_diff']:.2g}  "
              f"top-1 agreement {q['top1_agreement']:.1%}")
    if "note" in info:
        print(f"  note: {info['note']}")
    print(f"  {path.parent / INFO_FILE}")


if __name__ == "__main__":
    main()
