"""`--help`: read from the conf/ folder (no composing), it lists every group with its options, the command's own
keys and where to look next."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnlab.config import conf_dir, config_help

REPO = Path(__file__).resolve().parents[1]
CONF = conf_dir()


def options(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def listed(text: str) -> dict[str, list[str]]:
    """`group: a, b, c` lines of the help -> {group: [a, b, c]}."""
    lines = [line.strip().split(": ", 1) for line in text.splitlines() if line.startswith("  ") and ": " in line]
    return {name: [o.strip() for o in rest.split(",")] for name, rest in lines}


def test_train_help_lists_every_group_folder_and_its_options():
    out = subprocess.run([sys.executable, "app/train.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert out.returncode == 0, out.stderr[-3000:]
    groups = listed(out.stdout)
    folders = [p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"]
    assert folders
    for folder in folders:
        # A group chosen inside another config (the tokenizer inside data) is listed with its package.
        name = next((g for g in groups if g.split("@")[0] == folder.name), None)
        assert name is not None, f"group {folder.name} missing from --help:\n{out.stdout}"
        assert groups[name] == options(folder), name
    assert groups["tokenizer@data.tokenizer"] == options(CONF / "tokenizer")
    for folder in (CONF / "hydra").iterdir():
        if folder.is_dir():
            assert groups[f"hydra/{folder.name}"] == options(folder)
    # The command's own keys with their comments, and where the rest is.
    assert "compile: false" in out.stdout and "torch.compile" in out.stdout and "seed: 42" in out.stdout
    assert "--cfg job" in out.stdout and "--info" in out.stdout and "--hydra-help" in out.stdout


@pytest.mark.parametrize("config", ["validate", "generate", "serve"])
def test_other_commands_list_their_keys_and_no_groups(config):
    text = config_help(config, prog=f"python x/{config}.py")
    assert "run: null" in text and "--cfg job" in text
    assert "model:" not in text and "hydra:" not in text and "defaults:" not in text


def test_plot_lists_the_data_configs_it_reports_on():
    text = config_help("plot", prog="python x/plot.py")
    assert "run: null" in text and "data=<data config>" in text and "hydra:" not in text and "defaults:" not in text
    assert "text_classification" in listed(text)["data"] and "image_folder" in listed(text)["data"]


def test_a_new_option_appears_without_an_edit(tmp_path, monkeypatch):
    """The listing is the folder: a file dropped into a group is an option at once."""
    for path in CONF.rglob("*.yaml"):
        target = tmp_path / path.relative_to(CONF)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (tmp_path / "model" / "zz_new.yaml").write_text("_target_: attnlab.models.cnn.CNN\n")
    (tmp_path / "newgroup").mkdir()
    (tmp_path / "newgroup" / "a.yaml").write_text("x: 1\n")
    monkeypatch.setenv("ATTNLAB_CONF_DIR", str(tmp_path))
    groups = listed(config_help("train", prog="attnlab-train"))
    assert groups["model"][-1] == "zz_new" and groups["newgroup"] == ["a"]


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.py")
                                          if "script_settings(" in p.read_text()))
def test_key_value_scripts_answer_help_with_their_docstring_and_keys(script):
    out = subprocess.run([sys.executable, f"scripts/{script}", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "expected key=value" not in out.stdout + out.stderr
    if "keys (defaults):" in out.stdout:  # attnlab.cli.script_settings' help (scripts with argparse print their own)
        assert out.stdout.split("keys (defaults):")[0].strip(), "the script's docstring is printed above its keys"
    else:
        assert "usage:" in out.stdout, out.stdout
