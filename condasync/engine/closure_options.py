"""Command-line closure options (issue 14) merged over a config table's, and checked."""

from __future__ import annotations

import dataclasses

from condasync.engine.closure_state import keep_ms
from condasync.engine.filters import compile_spec
from condasync.engine.job import Closure
from condasync.engine.solver import parse_virtual_package
from condasync.errors import UsageError


def closure_options(
    table: Closure,
    lock: list[str] | None,
    solve: list[str] | None,
    platform: list[str] | None,
    virtual_package: list[str] | None,
    with_deps: bool,
    keep_unselected: str | None,
) -> Closure:
    """Options given on the command line replace the table's; the result is checked."""
    closure = dataclasses.replace(
        table,
        locks=tuple(lock) if lock else table.locks,
        solve=tuple(solve) if solve else table.solve,
        platforms=tuple(platform) if platform else table.platforms,
        virtual_packages=tuple(virtual_package) if virtual_package else table.virtual_packages,
        with_deps=with_deps or table.with_deps,
        keep_unselected=keep_unselected if keep_unselected is not None else table.keep_unselected,
    )
    check_closure(closure)
    return closure


def check_closure(closure: Closure) -> None:
    """Usage errors (exit 2) before any fetch."""
    keep_ms(closure.keep_unselected)
    for text in closure.virtual_packages:
        parse_virtual_package(text)
    for spec in closure.solve:
        try:
            compile_spec(spec)
        except ValueError as exc:
            raise UsageError(f"--solve: {exc}") from None
    for path in closure.locks:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"cannot read lockfile {path}: {exc.strerror}") from None
