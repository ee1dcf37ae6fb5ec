"""The architecture, enforced: each layer imports only the layers below it, the synthetic world's testbed is
imported by nothing generic, the plain-torch core needs no Hugging Face or Lightning, and no code sets the
hub offline for its users or points to files outside the repository."""

import ast
import re
from pathlib import Path

import pytest

import mbpo_lit

PACKAGE = Path(mbpo_lit.__file__).parent
# Lower layers first; a module may import its own layer and the ones before it.
LAYERS = ["core", "vlm", "data", "train", "commands", "testbed", "experiments"]
COMMANDS = {"mine", "remine", "evaluate", "fit", "cli"}


def layer(module: str) -> str | None:
    """The layer of `mbpo_lit.<...>`, or None for the package's entry points (__init__, __main__)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in ("__init__", "__main__"):
        return None
    return "commands" if parts[1] in COMMANDS else parts[1]


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out.append((".".join(rel.parts).removesuffix(".__init__"), path))
    return out


def imports(path: Path) -> set[str]:
    """Every module imported anywhere in the file, inside functions too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_every_module_belongs_to_a_layer():
    for name, _ in modules():
        assert layer(name) in (*LAYERS, None) or name == "mbpo_lit", f"{name} is in no layer of {LAYERS}"


@pytest.mark.parametrize("name, path", modules(), ids=[m for m, _ in modules()])
def test_imports_point_down_the_layers(name, path):
    own = layer(name)
    if own is None:
        return
    for target in imports(path):
        if not target.startswith("mbpo_lit.") or layer(target) not in LAYERS:
            continue
        assert LAYERS.index(layer(target)) <= LAYERS.index(own), f"{name} ({own}) imports {target} ({layer(target)})"


def test_the_import_walk_sees_imports_inside_functions(tmp_path):
    """The contract above must catch the hidden kind of import that once made a cycle."""
    (tmp_path / "m.py").write_text("def f():\n    from mbpo_lit.testbed.world import WorldConfig\n")
    assert "mbpo_lit.testbed.world" in imports(tmp_path / "m.py")


@pytest.mark.parametrize("name, path", [m for m in modules() if layer(m[0]) == "core"])
def test_the_core_is_plain_torch(name, path):
    heavy = {t.split(".")[0] for t in imports(path)} & {"transformers", "lightning", "peft", "datasets", "PIL"}
    assert not heavy, f"{name} imports {heavy}"


def test_no_code_forces_the_hub_offline():
    setters = re.compile(r"""environ(\.setdefault)?\s*[\[(]\s*["']HF_(HUB|DATASETS)_OFFLINE""")
    offenders = [str(p) for _, p in modules() if setters.search(p.read_text())]
    assert not offenders, f"these set HF_HUB_OFFLINE for every user: {offenders}"


def test_no_file_points_outside_the_repository():
    root = PACKAGE.parent
    texts = [
        *PACKAGE.rglob("*.py"),
        *PACKAGE.rglob("*.yaml"),
        *(root / "tests").glob("*.py"),
        *(root / "notebooks").glob("*.ipynb"),
        root / "README.md",
    ]
    pattern = re.compile(r"MBPO\.md|PITFALLS\.md|DESIGN\.md|FINDINGS\.md|\.\./shared|\bissue \d+\b")
    offenders = [f"{p.name}: {m.group(0)}" for p in texts if p.exists() for m in [pattern.search(p.read_text())] if m]
    assert not offenders, offenders


def test_the_public_api_gives_what_it_names():
    from mbpo_lit.evaluate import evaluate
    from mbpo_lit.mine import run

    assert mbpo_lit.mine_pairs is run and mbpo_lit.evaluate_model is evaluate
    for name in mbpo_lit.__all__:
        assert getattr(mbpo_lit, name) is not None and not isinstance(getattr(mbpo_lit, name), type(mbpo_lit)), name
