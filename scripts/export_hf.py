"""Export a run's causal LM as a Hugging Face folder (config.json, model.safetensors, tokenizer files) that
`transformers.AutoModelForCausalLM.from_pretrained` and `base=<folder>` read.

    python scripts/export_hf.py run=<run dir> [ckpt=best]

A run of `model=hf_causal_lm` exports its weights; a peft run (scitldr_lora, scitldr_ia3, ...) exports its base with
the adapter merged into the weights (peft's merge_and_unload; prompt and prefix tuning cannot be merged: use the
run's adapter/ folder with peft instead). The folder is `<run>/hf`, written once (the same folder `base=<run>` uses).
"""

from __future__ import annotations

import sys

from attnlab.errors import AttnlabError
from attnlab.runs.loading import export_hf


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = set(args) - {"run", "ckpt"} or [a for a in argv if "=" not in a]
    if unknown or "run" not in args:
        print(f"usage: python scripts/export_hf.py run=<run dir> [ckpt=best]{f' (unknown: {sorted(unknown)})' if unknown else ''}",
              file=sys.stderr)
        return 2
    try:
        out = export_hf(args["run"], ckpt=args.get("ckpt", "best"))
    except AttnlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
