"""The proxy's relay of a download in progress: it holds back the last byte until the file is
verified, and aborts (never completes the body) when verification fails."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from condasync.serve.stream import Download, ProxyAborted, relay

DATA = b"0123456789" * 1000


async def _run(tmp_path: Path, outcome: str) -> tuple[list[bytes], BaseException | None]:
    temp = tmp_path / "pkg.part"
    temp.write_bytes(b"")
    dl = Download(len(DATA), temp)
    dl.state = "streaming"
    sent: list[bytes] = []
    finished = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["body"])
        if not message.get("more_body"):
            finished.set()

    fd = os.open(temp, os.O_RDONLY)
    task = asyncio.ensure_future(relay(send, fd, dl))
    with open(temp, "ab") as fh:
        for i in range(0, len(DATA), 3000):
            fh.write(DATA[i : i + 3000])
            fh.flush()
            dl.written = min(len(DATA), i + 3000)
            dl.notify()
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert len(b"".join(sent)) == len(DATA) - 1  # everything but the last byte, so far
    dl.state = "done" if outcome == "ok" else "failed"
    dl.notify()
    error: BaseException | None = None
    try:
        await asyncio.wait_for(task, 5)
    except ProxyAborted as exc:
        error = exc
    os.close(fd)
    return sent, error


def test_relay_completes_after_verification(tmp_path: Path) -> None:
    sent, error = asyncio.run(_run(tmp_path, "ok"))
    assert error is None and b"".join(sent) == DATA


@pytest.mark.parametrize("outcome", ["failed"])
def test_relay_aborts_on_a_bad_file(tmp_path: Path, outcome: str) -> None:
    sent, error = asyncio.run(_run(tmp_path, outcome))
    assert isinstance(error, ProxyAborted)
    assert len(b"".join(sent)) < len(DATA)
