"""Every command's --help shows every option's help text whole: nothing inside square brackets
(`[default: 16]`, `[[mirror]]`) may be eaten as markup."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from condasync.cli import app

ROOT = typer.main.get_command(app)


def commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path] if path else []
    if hasattr(group, "commands"):
        for name, sub in group.commands.items():
            found += commands(sub, (*path, name))
    return found


def command_at(path: tuple[str, ...]) -> Any:
    cmd = ROOT
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def flat(text: str) -> str:
    """Without whitespace: help is wrapped, at hyphens too ("re-" / "fetch")."""
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("path", commands(ROOT), ids=" ".join)
def test_help_keeps_every_option_text(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    shown = flat(result.output)
    for param in command_at(path).params:
        text = getattr(param, "help", None)
        if text:
            assert flat(text) in shown, f"{' '.join(path)}: help of {param.name} lost: {text!r}"


def test_bracketed_texts_survive() -> None:
    shown = flat(CliRunner().invoke(app, ["mirror", "--help"], env={"COLUMNS": "200"}).output)
    for text in ("[default: 16]", "[[mirror]]", "[default: 3]", "[default: 50"):
        assert flat(text) in shown


def test_rich_progress_shows_files_and_bytes_apart() -> None:
    from rich.console import Console

    import condasync.display as display
    from condasync.display import RichListener
    from condasync.models import Event

    saved, display.err = display.err, Console(record=True, width=160, force_terminal=False)
    try:
        listener = RichListener()
    finally:
        display.err = saved
    with listener:
        listener(Event("fetching", count=2, message="linux-64 noarch"))
        assert "fetching 2 indexes: linux-64, noarch" in listener.progress.tasks[0].description
        listener(Event("plan", "linux-64", count=2, size=2048))
        listener(Event("plan", "noarch", count=1, size=100))
        assert all("fetching" not in t.description for t in listener.progress.tasks)
        listener(Event("bytes", "linux-64", size=1024))
        listener(Event("file", "linux-64", name="a-1-0.conda", size=1024))
        task = {t.id: t for t in listener.progress.tasks}[listener.tasks["linux-64"]]
        assert task.fields["files"] == "1/2 files"
        assert task.completed == 1024 and task.total == 2048
        total = {t.id: t for t in listener.progress.tasks}[listener.total]  # type: ignore[index]
        assert total.total == 2148 and total.completed == 1024


def test_rich_dry_run_lists_the_first_files_of_a_subdir_only() -> None:
    from rich.console import Console

    import condasync.display as display
    from condasync.display import DRY_RUN_SHOWN, RichListener
    from condasync.models import Event

    console = Console(record=True, width=160, force_terminal=False)
    saved, display.err = display.err, console
    try:
        listener = RichListener()
    finally:
        display.err = saved
    with listener:
        for subdir in ("linux-64", "noarch"):
            listener(Event("dry-run", subdir, count=500, size=5000))
            for i in range(500):
                listener(Event("dry-run", subdir, name=f"p-{i}-0.conda", message="would fetch"))
    text = console.export_text()
    for subdir in ("linux-64", "noarch"):
        assert f"{subdir}: 500 files to fetch (5000 bytes) (dry run)" in text
        assert f"{subdir}: would fetch p-{DRY_RUN_SHOWN - 1}-0.conda" in text
        assert f"{subdir}: would fetch p-{DRY_RUN_SHOWN}-0.conda" not in text
        assert text.count(f"{subdir}: would fetch") == DRY_RUN_SHOWN
        assert f"{subdir}: ... (the whole list: --json, or stderr to a file)" in text
