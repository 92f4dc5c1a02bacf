"""Sync tasks in the database, shared by replicas: at most one active task per channel (a
unique index), a pending -> running claim in one conditional UPDATE, heartbeats, and the
reaping of tasks whose replica is gone. Mixed into `Database`."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from condasync.serve.rows import ACTIVE, TaskRow, utcnow

STALE_AFTER = 30.0  # seconds without a heartbeat after which a task's replica is taken as gone


@dataclass(frozen=True)
class Task:
    id: int
    channel: str
    action: str
    status: str
    created_at: datetime
    start_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    repeat_every_seconds: int | None
    report: dict[str, Any] | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        def iso(when: datetime | None) -> str | None:
            if when is None:
                return None
            return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).isoformat()

        return {
            "id": self.id,
            "channel": self.channel,
            "action": self.action,
            "status": self.status,
            "created_at": iso(self.created_at),
            "start_at": iso(self.start_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "repeat_every_seconds": self.repeat_every_seconds,
            "report": self.report,
            "error": self.error,
        }


def replica_id() -> str:
    """Who runs a task: host and pid (so a restart on the same host sees its dead tasks at
    once), and a random part (pids are reused)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{os.urandom(4).hex()}"


def owner_is_dead(owner: str | None, me: str) -> bool:
    """Whether owner names a process on this host that no longer runs (a previous life of
    this one included: in a container every start may get the same pid)."""
    if not owner:
        return True
    host, pid, _ = me.rsplit(":", 2)
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit() or owner == me:
        return False
    if int(parts[1]) == int(pid):
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class TaskQueries:
    """The task half of `Database` (which provides the session and the write lock)."""

    _write_lock: threading.Lock

    def session(self) -> Session:
        raise NotImplementedError

    @staticmethod
    def _task(row: TaskRow) -> Task:
        return Task(
            row.id,
            row.channel,
            row.action,
            row.status,
            row.created_at,
            row.start_at,
            row.started_at,
            row.finished_at,
            row.repeat_every_seconds,
            orjson.loads(row.report) if row.report else None,
            row.error,
        )

    def create_task(
        self,
        channel: str,
        action: str,
        start_at: datetime | None,
        repeat: int | None,
        owner: str | None = None,
    ) -> Task | None:
        """A new pending task owned by `owner`; None when the channel already has an active
        one (the unique index decides, so this holds across replicas)."""
        with self._write_lock, self.session() as s:
            row = TaskRow(
                channel=channel,
                action=action,
                status="pending",
                start_at=start_at,
                repeat_every_seconds=repeat,
                owner=owner,
                heartbeat_at=utcnow(),
            )
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                return None
            return self._task(row)

    def claim_task(self, task_id: int, owner: str) -> bool:
        """pending -> running for its owner, in one conditional UPDATE: False when the task
        was ended meanwhile (channel deleted, taken as stale by another replica)."""
        with self._write_lock, self.session() as s:
            result = s.execute(
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.status == "pending", TaskRow.owner == owner)
                .values(status="running", started_at=utcnow(), heartbeat_at=utcnow())
            )
            s.commit()
            return bool(getattr(result, "rowcount", 0) == 1)

    def heartbeat(self, owner: str) -> None:
        """Tell other replicas this one still runs its tasks."""
        with self._write_lock, self.session() as s:
            s.execute(
                update(TaskRow)
                .where(TaskRow.owner == owner, TaskRow.status.in_(ACTIVE))
                .values(heartbeat_at=utcnow())
            )
            s.commit()

    def task(self, task_id: int) -> Task | None:
        with self.session() as s:
            row = s.get(TaskRow, task_id)
            return self._task(row) if row else None

    def active_task(self, channel: str) -> Task | None:
        with self.session() as s:
            row = s.scalar(
                select(TaskRow)
                .where(TaskRow.channel == channel, TaskRow.status.in_(("pending", "running")))
                .order_by(TaskRow.id)
            )
            return self._task(row) if row else None

    def update_task(self, task_id: int, **fields: Any) -> None:
        with self._write_lock, self.session() as s:
            row = s.get(TaskRow, task_id)
            if row is None:
                return
            for name, value in fields.items():
                if name == "report" and value is not None:
                    value = orjson.dumps(value).decode()
                setattr(row, name, value)
            s.commit()

    def interrupt_stale_tasks(self, me: str, stale_after: float = STALE_AFTER) -> int:
        """End active tasks whose replica is gone: silent for stale_after seconds, or a dead
        process on this host. Tasks of live replicas are left alone. Returns how many."""
        cutoff = utcnow() - timedelta(seconds=stale_after)
        ended = 0
        with self._write_lock, self.session() as s:
            rows = s.scalars(select(TaskRow).where(TaskRow.status.in_(ACTIVE))).all()
            for row in rows:
                if row.owner == me:
                    continue
                beat = row.heartbeat_at
                if beat is not None and beat.tzinfo is None:
                    beat = beat.replace(tzinfo=timezone.utc)
                if not (beat is None or beat < cutoff or owner_is_dead(row.owner, me)):
                    continue
                result = s.execute(
                    update(TaskRow)
                    .where(
                        TaskRow.id == row.id,
                        TaskRow.status.in_(ACTIVE),
                        or_(
                            TaskRow.heartbeat_at.is_(None), TaskRow.heartbeat_at == row.heartbeat_at
                        ),
                    )
                    .values(
                        status="failed",
                        error="interrupted: the server stopped",
                        finished_at=utcnow(),
                    )
                )
                ended += int(getattr(result, "rowcount", 0))
            s.commit()
        return ended
