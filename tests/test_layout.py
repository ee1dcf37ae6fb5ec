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
LAYERS = ["core", "vlm", "data", "evaluation", "mining", "train", "commands", "testbed", "experiments"]
COMMANDS = {"mine", "evaluate", "export", "fit", "cli"}
# Size limits: a module a person reads in one sitting, a function on one screen, a command that only wires.
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_COMMAND_LINES = 450, 80, 100


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


def test_the_public_api_gives_what_it_names_under_its_own_name():
    from mbpo_lit.evaluation.evaluator import evaluate_model
    from mbpo_lit.mining.job import mine_pairs

    assert mbpo_lit.mine_pairs is mine_pairs and mbpo_lit.evaluate_model is evaluate_model
    for name in mbpo_lit.__all__:
        value = getattr(mbpo_lit, name)
        assert getattr(value, "__name__", name) == name and not isinstance(value, type(mbpo_lit)), name


def test_editors_see_every_public_name():
    """The `TYPE_CHECKING` block imports what `__all__` lists, so an editor resolves `mbpo_lit.MineConfig`."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen = {a.asname or a.name for n in block.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert seen == set(mbpo_lit.__all__)


def long_parts(path: Path) -> list[str]:
    """The functions of a file longer than MAX_FUNCTION_LINES, and the file itself if over MAX_MODULE_LINES."""
    text = path.read_text()
    out = [f"{path.name}: {len(text.splitlines())} lines"] if len(text.splitlines()) > MAX_MODULE_LINES else []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{path.name}:{node.lineno} {node.name}() {length} lines")
    return out


def test_no_module_or_function_is_too_long_to_read_in_one_sitting():
    offenders = [
        p for path in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "tests").glob("*.py")] for p in long_parts(path)
    ]
    assert not offenders, offenders


def test_the_size_check_sees_a_long_function(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text("def f():\n" + body)
    assert long_parts(tmp_path / "m.py") == [f"m.py:1 f() {MAX_FUNCTION_LINES + 1} lines"]


@pytest.mark.parametrize("name", sorted(COMMANDS - {"cli"}))
def test_command_modules_only_wire_the_library(name):
    lines = len((PACKAGE / f"{name}.py").read_text().splitlines())
    assert lines < MAX_COMMAND_LINES, f"mbpo_lit/{name}.py has {lines} lines: move library code into a package"
