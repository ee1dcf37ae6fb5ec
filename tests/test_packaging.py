"""Packaging: environment.yml and pyproject.toml must install the same dependency set."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {_name(r) for r in reqs}


def _environment_names() -> set[str]:
    names, in_pip = set(), False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("- pip:"):
            in_pip = True
            continue
        if in_pip and stripped.startswith("- ") and not stripped.startswith("- -e"):
            names.add(_name(stripped[2:]))
    return names


def test_environment_and_pyproject_name_the_same_dependencies():
    assert _environment_names() == _pyproject_names()


def test_no_upper_pins_without_a_reason():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "pyproject.toml").read_text()
    for req in project["dependencies"]:
        if "<" in req:
            line = next(line for line in text.splitlines() if req in line)
            assert "#" in line, f"upper pin without a reason beside it: {req}"
