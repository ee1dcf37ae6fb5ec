"""Write docs/reference/commands.md from every command's `--help` (run after changing an option):

    python docs/reference/make_commands.py

tests/test_cli.py checks that every option a command's `--help` lists is in the page.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's package, whatever is installed
from mbpo_lit.__main__ import COMMANDS, GROUPS, main  # noqa: E402


def help_page(command: str) -> str:
    """`python -m mbpo_lit COMMAND --help`, as printed at 100 columns."""
    os.environ["COLUMNS"] = "100"
    out = io.StringIO()
    argv, sys.argv = sys.argv, ["mbpo_lit", command, "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main([command, "--help"])
    finally:
        sys.argv = argv
    return out.getvalue().rstrip()


def page() -> str:
    lines = [
        "# Command reference",
        "",
        "Every command is `python -m mbpo_lit <command>`; each takes `--config FILE.yaml` (its options as YAML) and",
        "`--print_config`. Generated from `--help` by `python docs/reference/make_commands.py`.",
        "",
    ]
    for group, title in GROUPS.items():
        lines += [f"## {title.capitalize()}", ""]
        lines += [f"- [`{name}`](#{name}): {text}" for name, (_, g, text) in COMMANDS.items() if g == group]
        lines.append("")
    for name in COMMANDS:
        lines += [f"## {name}", "", "```text", help_page(name), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    target = Path(__file__).with_name("commands.md")
    target.write_text(page())
    print(f"wrote {target}")
