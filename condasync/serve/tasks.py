"""Sync tasks for mirror channels: one background thread per channel runs the mirror engine
(`condasync.sync.run_mirror`, the same code path as `condasync mirror`), honouring `start_at`
and `repeat_every_seconds`, and records status and report in the database."""

from __future__ import annotations

import shutil
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from condasync.serve.db import Channel, Database, Task, utcnow
from condasync.sync import MirrorJob, run_mirror


class TaskRunner:
    def __init__(self, db: Database, root: Path) -> None:
        self.db = db
        self.root = root
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}

    def synchronize(
        self, channel: Channel, start_at: datetime | None, repeat: int | None
    ) -> tuple[Task, bool]:
        """The channel's pending or running task if there is one, else a new one; (task, new)."""
        with self._lock:
            active = self.db.active_task(channel.name)
            if active is not None:
                return active, False
            if start_at is not None and start_at.tzinfo is None:
                start_at = start_at.replace(tzinfo=timezone.utc)
            task = self.db.create_task(channel.name, "synchronize", start_at, repeat)
            thread = threading.Thread(
                target=self._run, args=(task, channel), name=f"sync-{channel.name}", daemon=True
            )
            self._threads[channel.name] = thread
            thread.start()
            return task, True

    def stop(self) -> None:
        self._stop.set()

    def _run(self, task: Task, channel: Channel) -> None:
        while True:
            if task.start_at is not None:
                start_at = task.start_at
                if start_at.tzinfo is None:
                    start_at = start_at.replace(tzinfo=timezone.utc)
                delay = (start_at - utcnow()).total_seconds()
                if delay > 0 and self._stop.wait(delay):
                    return
            if self.db.channel(channel.name) is None:
                self.db.update_task(
                    task.id, status="failed", error="channel deleted", finished_at=utcnow()
                )
                return
            self.db.update_task(task.id, status="running", started_at=utcnow())
            try:
                report = run_mirror(
                    MirrorJob(
                        url=channel.mirror_channel_url or "", target=str(self.root / channel.name)
                    )
                )
                doc = report.to_dict()
                status = "success" if report.exit_code == 0 else "failed"
                error = report.error
                if status == "failed" and not error:
                    error = f"{len(doc['failed'])} package(s) failed"
            except Exception as exc:  # a bug must still end the task, not leave it running
                doc, status, error = None, "failed", f"{type(exc).__name__}: {exc}"
            self.db.update_task(
                task.id, status=status, report=doc, error=error, finished_at=utcnow()
            )
            if self.db.channel(channel.name) is None:
                # Deleted while the sync ran: the engine may have written files since.
                shutil.rmtree(self.root / channel.name, ignore_errors=True)
                return
            repeat = task.repeat_every_seconds
            if not repeat or self._stop.is_set():
                return
            with self._lock:
                task = self.db.create_task(
                    channel.name, "synchronize", utcnow() + timedelta(seconds=repeat), repeat
                )
