"""Sync tasks for mirror channels: one background thread per channel runs the mirror engine
(`condasync.engine.sync.run_mirror`, the same code path as `condasync mirror`), honouring `start_at`
and `repeat_every_seconds`, and records status and report in the database.

Several replicas may share the database. A channel has at most one pending or running task (a
unique index), a task is run only by the replica that created it and only after it claims the
row (pending -> running in one conditional UPDATE), and a heartbeat lets the other replicas end
the tasks of a replica that died.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from condasync.engine.filters import Filters
from condasync.engine.job import MirrorJob
from condasync.engine.sync import run_mirror
from condasync.serve.closure_settings import job_closure
from condasync.serve.db import STALE_AFTER, Channel, Database, Task, replica_id, utcnow
from condasync.serve.metrics import METRICS
from condasync.serve.store import ChannelStore

LOG = logging.getLogger("uvicorn.error")
HEARTBEAT = STALE_AFTER / 6


class TaskRunner:
    def __init__(self, db: Database, store: ChannelStore, me: str | None = None) -> None:
        self.db = db
        self.store = store
        self.me = me or replica_id()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._beat: threading.Thread | None = None
        # Called with the channel name after each sync (the pages rebuild their summary).
        self.on_synced: list[Callable[[str], object]] = []

    def start(self) -> None:
        """Begin the heartbeat (and the reaping of other replicas' dead tasks)."""
        if self._beat is None:
            self._beat = threading.Thread(
                target=self._heartbeat, name="tasks-heartbeat", daemon=True
            )
            self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                self.db.heartbeat(self.me)
                self.db.interrupt_stale_tasks(self.me)
            except Exception as exc:  # the database may be briefly away; try again later
                LOG.warning("task heartbeat failed: %s", exc)

    def synchronize(
        self,
        channel: Channel,
        start_at: datetime | None,
        repeat: int | None,
        action: str = "synchronize",
    ) -> tuple[Task, bool]:
        """The channel's pending or running task if there is one (whichever replica started
        it), else a new one run here; (task, new)."""
        if start_at is not None and start_at.tzinfo is None:
            start_at = start_at.replace(tzinfo=timezone.utc)
        with self._lock:
            for _attempt in range(5):
                active = self.db.active_task(channel.name)
                if active is not None:
                    return active, False
                task = self.db.create_task(channel.name, action, start_at, repeat, owner=self.me)
                if task is not None:
                    break
                # Another replica created one between our read and our insert: return it.
            else:
                raise RuntimeError(f"cannot create or find the task of {channel.name!r}")
            thread = threading.Thread(
                target=self._run, args=(task, channel), name=f"sync-{channel.name}", daemon=True
            )
            self._threads[channel.name] = thread
            thread.start()
            return task, True

    def stop(self) -> None:
        self._stop.set()

    def _run(self, task: Task | None, channel: Channel) -> None:
        while task is not None:
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
            if not self.db.claim_task(task.id, self.me):
                return  # ended meanwhile (or taken as stale): never run it
            self._sync(task, channel)
            for hook in self.on_synced:
                try:
                    hook(channel.name)
                except Exception as exc:  # a summary that cannot be built is not a sync failure
                    LOG.warning("%s: after sync: %s", channel.name, exc)
            if self.db.channel(channel.name) is None:
                # Deleted while the sync ran: the engine may have written files since.
                self.store.remove(channel.name)
                return
            repeat = task.repeat_every_seconds
            if not repeat or self._stop.is_set():
                return
            with self._lock:
                task = self.db.create_task(
                    channel.name,
                    task.action,
                    utcnow() + timedelta(seconds=repeat),
                    repeat,
                    owner=self.me,
                )

    def _sync(self, task: Task, channel: Channel) -> None:
        started = time.monotonic()
        try:
            # The settings of now: a PATCH since the task was queued applies to this run.
            channel = self.db.channel(channel.name) or channel
            lists = channel.settings.get("metadata") or {}
            with tempfile.TemporaryDirectory(prefix="condasync-locks-") as workdir:
                report = run_mirror(
                    MirrorJob(
                        url=channel.mirror_channel_url or "",
                        target=self.store.mirror_target(channel.name),
                        filters=Filters(
                            include=tuple(lists.get("includelist") or ()),
                            exclude=tuple(lists.get("excludelist") or ()),
                        ),
                        max_delete=float(channel.settings.get("max_delete", 50)),
                        proxied=tuple(lists.get("proxylist") or ()),
                        s3=self.store.s3_options,
                        closure=job_closure(channel.settings, Path(workdir)),
                    )
                )
            doc = report.to_dict()
            status = "success" if report.exit_code == 0 else "failed"
            error = report.error
            if status == "failed" and not error:
                error = f"{len(doc['failed'])} package(s) failed"
        except Exception as exc:  # a bug must still end the task, not leave it running
            doc, status, error = None, "failed", f"{type(exc).__name__}: {exc}"
        self.db.update_task(task.id, status=status, report=doc, error=error, finished_at=utcnow())
        METRICS.sync_finished(channel.name, status, time.monotonic() - started)
