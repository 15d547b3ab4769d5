"""The package installs beside a user's own environment: its requirements are ranges, never exact pins, so
``pip install dipair-rerank`` keeps a torch (or Pyserini) the user already has within range."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_requirements_are_ranges_not_pins():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pinned = [str(r) for r in requirements if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"exact pins replace the user's own packages: {pinned}"
    torch = next(r for r in requirements if r.name == "torch")
    assert torch.specifier.contains("2.13.0") and torch.specifier.contains("2.9.1")
