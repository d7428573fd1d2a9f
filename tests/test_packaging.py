"""pyproject.toml declares what the package imports: every third-party module imported by src/attnlab and
src/hydra_plugins comes from a declared dependency; modules of an optional extra are imported lazily (inside a
function), never at import time; requirements.txt's pins satisfy pyproject's ranges."""

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
OWN = {"attnlab", "hydra_plugins.attnlab_optuna"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def declared() -> tuple[set[str], dict[str, str]]:
    """(core distributions, {distribution: extra}) of pyproject.toml."""
    core = {canonical(Requirement(r).name) for r in project()["dependencies"]}
    extras = {canonical(Requirement(r).name): extra for extra, reqs in project().get("optional-dependencies", {}).items()
              for r in reqs if not Requirement(r).name == "attnlab"}
    return core, extras


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, (ast.Name, ast.Attribute)) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, imported at import time) for every absolute import of a file; `if TYPE_CHECKING:` left out."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, eager) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, eager))
            lazy = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, eager and not lazy)

    visit(ast.parse(path.read_text()), True)
    return found


@functools.cache
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution(module: str) -> str:
    """The distribution that provides a module (namespace packages such as hydra_plugins by their sub-package)."""
    parts = module.split(".")
    if parts[0] == "hydra_plugins":
        return canonical(parts[1])  # hydra_joblib_launcher -> hydra-joblib-launcher
    dists = _providers().get(parts[0])
    assert dists, f"{module}: no installed distribution provides it"
    return canonical(dists[0])


def third_party() -> dict[str, dict[str, list[str]]]:
    """{distribution: {'eager' | 'lazy': [file:module, ...]}} over the package's sources."""
    found: dict[str, dict[str, list[str]]] = {}
    for path in sorted([*(REPO / "src" / "attnlab").rglob("*.py"), *(REPO / "src" / "hydra_plugins").rglob("*.py")]):
        for module, eager in imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__" or any(module == o or module.startswith(o + ".") for o in OWN):
                continue
            where = f"{path.relative_to(REPO)}:{module}"
            found.setdefault(distribution(module), {"eager": [], "lazy": []})["eager" if eager else "lazy"].append(where)
    return found


def test_every_imported_distribution_is_declared():
    core, extras = declared()
    used = third_party()
    assert {"torch", "lightning", "tokenizers", "hydra-core", "optuna", "transformers"} <= set(used)
    missing = {d: uses for d, uses in used.items() if d not in core and d not in extras}
    assert not missing, f"imported but not in pyproject.toml's dependencies or extras: {missing}"


def test_optional_extras_are_imported_lazily():
    core, extras = declared()
    eager = {d: uses["eager"] for d, uses in third_party().items() if d in extras and d not in core and uses["eager"]}
    assert not eager, f"modules of an optional extra imported at import time (move the import into the function): {eager}"


def test_requirement_pins_satisfy_pyproject():
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[canonical(req.name)] = next(iter(req.specifier)).version
    for spec in [*project()["dependencies"], *(r for reqs in project().get("optional-dependencies", {}).values() for r in reqs)]:
        req = Requirement(spec)
        if req.name == "attnlab":
            continue
        assert canonical(req.name) in pins, f"{req.name} is declared in pyproject.toml but not pinned in requirements.txt"
        assert req.specifier.contains(pins[canonical(req.name)], prereleases=True), f"{req.name}=={pins[canonical(req.name)]} is outside {spec}"


def test_sweeps_run_on_current_optuna_without_hydras_optuna_plugin():
    """attnlab's own sweeper replaced hydra-optuna-sweeper, whose optuna<3 held Optuna at 2.10 and SQLAlchemy at 1.4."""
    pins = {canonical(Requirement(line.split("#")[0]).name): Requirement(line.split("#")[0]).specifier
            for line in (REPO / "requirements.txt").read_text().splitlines() if line.split("#")[0].strip()}
    assert "hydra-optuna-sweeper" not in pins and "hydra-optuna-sweeper" not in str(project())
    assert not pins["optuna"].contains("2.10.1") and pins["optuna"].contains("5.1.0")
    assert not pins["sqlalchemy"].contains("1.4.54") and next(iter(pins["sqlalchemy"])).version.startswith("2.")
    assert not any(canonical(Requirement(r).name) == "optuna-dashboard" for r in project()["dependencies"])  # an extra


@pytest.mark.parametrize("name", ["torch"])
def test_torch_stays_a_range(name):
    (spec,) = [r for r in project()["dependencies"] if Requirement(r).name == name]
    assert "==" not in spec and "+" not in spec and not Requirement(spec).url  # never a CUDA (or any) build pinned here


def test_a_plain_install_finds_the_configs_of_the_checkout_it_runs_in(tmp_path):
    """`pip install .` copies the package into site-packages, away from conf/: run from the checkout, it uses its
    conf/; run elsewhere, it says how to point it at one."""
    import shutil
    import subprocess

    shutil.copytree(REPO / "src" / "attnlab", tmp_path / "site" / "attnlab")
    code = "import attnlab.config as c; print(c.conf_dir(), c.repo_root())"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [str(REPO / "conf"), str(REPO)], out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "run from the attnlab checkout" in out.stderr and "ATTNLAB_CONF_DIR" in out.stderr
