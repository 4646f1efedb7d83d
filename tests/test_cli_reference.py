"""docs/cli.md is the command's own help: the reference a user reads cannot drift from what
`saematch … --help` prints (tools/cli_reference.py writes it)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_reference_in_docs_is_the_help_the_command_prints(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "tools/cli_reference.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    written = (ROOT / "docs/cli.md").read_text()
    assert tool.reference() == written, "docs/cli.md is stale: run python tools/cli_reference.py --write"


def test_every_subcommand_has_a_section_in_the_reference():
    from saematch.cli import parser

    sub = next(a for a in parser()._actions if a.dest == "command")
    written = (ROOT / "docs/cli.md").read_text()
    for name in sub.choices:
        assert f"## saematch {name}\n" in written and f"$ saematch {name} --help\nusage: saematch {name} " in written
