"""Validate a saved run: python val/validate.py run=<run dir> [ckpt=best|last|<path>] [split=test|val]."""

from attnlab.cli import validate

if __name__ == "__main__":
    validate()
