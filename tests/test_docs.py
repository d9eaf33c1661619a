"""The documentation site: `mkdocs build --strict` succeeds (the README as home, the method pages, the CLI reference,
the API reference generated from the docstrings by mkdocstrings) and holds what it should; docs/cli.md is what the
commands' own definitions say.

Regenerate docs/cli.md after changing a command or an option: ``python tests/test_docs.py --write``.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from connprune import cli

ROOT = Path(__file__).resolve().parents[1]
CLI_PAGE = ROOT / "docs" / "cli.md"
HEADER = """\
# CLI reference

Generated from the commands' definitions by `python tests/test_docs.py --write` (the test suite fails when this page
and `connprune COMMAND --help` disagree). Every command takes `-h`/`--help`.

Exit status: 0 done; 1 some runs of `connprune run` failed; 2 a user mistake (a bad flag or value, an unknown name, a
missing file, an existing `--out`), reported as one line on stderr that names the problem and the fix (`connprune
--debug COMMAND ...` shows the traceback instead); 130 interrupted (Ctrl-C), with a line saying how to continue.
With `--json`, stdout holds one JSON document and nothing else; progress, notes and warnings go to stderr.
"""
TYPE_NAMES = {bool: "flag", int: "integer", float: "number", str: "text", Path: "path"}


# ------------------------------------------------------------------------------------------------ the CLI page


def _type_name(param: Any) -> str:
    """What a parameter takes, in words: its annotation (typer) or its click type, its lower bound, repeatable."""
    if getattr(param, "is_flag", False):
        return "flag"
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    name = TYPE_NAMES.get(annotation) if annotation is not None else None
    if name is None:
        name = getattr(getattr(param, "type", None), "name", None) or "text"
    if getattr(param, "min", None) is not None:
        name += f" ≥ {param.min}"
    return name + (", repeatable" if getattr(param, "multiple", False) else "")


def _default(param: Any) -> str:
    if param.required:
        return "required"
    if getattr(param, "is_flag", False):
        return "off" if not param.default else "on"
    if param.default in (None, [], ()):
        return "–"
    return f"`{param.default}`"


def _cell(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _section(title: str, command: Any) -> list[str]:
    arguments = [p for p in command.params if not getattr(p, "opts", [""])[0].startswith("-")]
    usage = " ".join([title, "[OPTIONS]", *(p.name.upper() if p.required else f"[{p.name.upper()}]"
                                            for p in arguments)])
    if isinstance(command, typer.core.TyperGroup):
        usage += " COMMAND [ARGS]..."
    lines = [f"## `{title}`", "", _cell(command.help), "", f"    {usage}", "",
             "| option | takes | default | description |", "|---|---|---|---|"]
    for param in command.params:
        names = ", ".join(f"`{name}`" for name in [*param.opts, *param.secondary_opts])
        if param in arguments:
            names = f"`{param.name.upper()}` (argument)"
        lines.append(f"| {names} | {_type_name(param)} | {_default(param)} | {_cell(param.help)} |")
    help_names = ", ".join(f"`{name}`" for name in cli.app.info.context_settings["help_option_names"])
    lines.append(f"| {help_names} | flag | off | Show the help and exit. |")
    return [*lines, ""]


def cli_reference() -> str:
    """docs/cli.md: one section per command, in the order of `connprune --help`, from the commands' definitions."""
    group = typer.main.get_command(cli.app)
    lines = [HEADER]
    lines += _section("connprune", group)
    for name, command in group.commands.items():
        lines += _section(f"connprune {name}", command)
    return "\n".join(lines).rstrip() + "\n"


def test_cli_page_is_what_the_commands_say():
    assert CLI_PAGE.read_text() == cli_reference(), "docs/cli.md is stale: run python tests/test_docs.py --write"


def test_cli_page_lists_every_command_and_option(monkeypatch, capsys):
    """Checked against `connprune COMMAND --help` itself: each option it shows appears in the page's section."""
    page = CLI_PAGE.read_text()
    sections = dict(re.findall(r"^## `connprune ?([\w-]*)`\n(.*?)(?=^## |\Z)", page, flags=re.S | re.M))
    group = typer.main.get_command(cli.app)
    assert set(sections) == {"", *group.commands}
    for name in ["", *group.commands]:
        monkeypatch.setattr(sys, "argv", ["connprune", *([name] if name else []), "--help"])
        monkeypatch.setenv("COLUMNS", "200")
        with pytest.raises(SystemExit) as exited:
            cli.main()
        options_panel = capsys.readouterr().out.split("─ Options ─", 1)[1].split("╰", 1)[0]
        shown = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", options_panel))
        assert exited.value.code == 0 and shown
        assert shown <= set(re.findall(r"`(--[a-z][\w-]*)`", sections[name])), name


# ------------------------------------------------------------------------------------------------ the site


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(not (_has("mkdocs") and _has("mkdocstrings_handlers.python")),
                    reason="mkdocs and mkdocstrings[python] are not installed (pip install -e '.[docs]')")
def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(site)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    readme = (ROOT / "README.md").read_text().splitlines()
    assert "[docs/](docs/index.md)" in readme[1]  # the README's intro links the docs (docs/index.md skips that line)
    home = (site / "index.html").read_text()
    for heading in re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), flags=re.M):  # the README is home
        assert heading.split("`")[0].strip() in home, heading
    for page in (ROOT / "docs" / "methods").glob("*.md"):
        folder = site / "methods" / ("" if page.stem == "index" else page.stem)
        assert (folder / "index.html").is_file(), page.name
    cli_html = (site / "cli" / "index.html").read_text()
    assert all(f"connprune {name}" in cli_html for name in typer.main.get_command(cli.app).commands)
    api = (site / "api" / "index.html").read_text()
    for anchor in ("connprune.methods.PruningMethod.prune", "connprune.methods.create", "connprune.surgery.apply",
                   "connprune.graph.dependency.build", "connprune.measure.sparsity.sparsity",
                   "connprune.checkpoint.save",
                   "connprune.checkpoint.load", "connprune.models.create", "connprune.data.load"):
        assert f'id="{anchor}"' in api, anchor
    # a docstring's text, rendered: PruningMethod.describe's first line
    assert "Name, kind, paper, parameters with defaults and descriptions" in api


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        CLI_PAGE.write_text(cli_reference())
        print(f"wrote {CLI_PAGE}")
    else:
        print(__doc__)
