"""The server's state in SQL (SQLite by default, PostgreSQL for several replicas, any SQLAlchemy
URL): channels, API keys, roles and sync tasks. Every function opens and closes its own short
transaction; the claims that keep replicas from running one task twice are single statements."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from condasync.serve.roles import Identity, hash_key, new_key, same_hash

STATE_DIR = ".condasync"
DB_NAME = "condasync.db"
ACTIVE = ("pending", "running")
STALE_AFTER = 30.0  # seconds without a heartbeat after which a task's replica is taken as gone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class ChannelRow(Base):
    __tablename__ = "channels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    mirror_channel_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    mirror_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    ttl: Mapped[int] = mapped_column(Integer, default=600)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))  # the first characters, to tell keys apart
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class ChannelRoleRow(Base):
    __tablename__ = "channel_roles"
    __table_args__ = (UniqueConstraint("key_id", "channel"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))


class TaskRow(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    start_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    repeat_every_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    report: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The replica running the task ("host:pid:random") and when it last said it is alive.
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    # At most one pending or running task per channel, whatever replica asks: the database
    # refuses a second one, so two replicas racing to create it cannot both win.
    __table_args__ = (
        Index(
            "one_active_task_per_channel",
            "channel",
            unique=True,
            sqlite_where=text("status IN ('pending', 'running')"),
            postgresql_where=text("status IN ('pending', 'running')"),
        ),
    )


@dataclass(frozen=True)
class Channel:
    name: str
    private: bool
    mirror_channel_url: str | None
    mirror_mode: str | None  # "proxy", "mirror", or None for a plain tree without a row
    ttl: int = 600

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "private": self.private,
            "mirror_channel_url": self.mirror_channel_url,
            "mirror_mode": self.mirror_mode,
            "ttl": self.ttl,
        }


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


@dataclass(frozen=True)
class KeyInfo:
    id: int
    hint: str
    role: str | None
    channels: dict[str, str]
    description: str
    created_at: datetime
    revoked: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hint": self.hint,
            "role": self.role,
            "channels": self.channels,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "revoked": self.revoked,
        }


class ChannelExists(Exception):
    pass


def default_url(root: Path) -> str:
    return f"sqlite:///{root / STATE_DIR / DB_NAME}"


def engine_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean the psycopg 3 driver (SQLAlchemy would pick
    psycopg2, which we do not ship); an explicit `+driver` is kept."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    """A thin store over SQLAlchemy; returns frozen dataclasses, never live ORM objects."""

    def __init__(self, url: str) -> None:
        self.url = url
        url = engine_url(url)
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :]
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 10}
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        Base.metadata.create_all(self.engine)
        self._migrate()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()

    def _migrate(self) -> None:
        """Databases made by an earlier version lack the task ownership columns and index."""
        columns = {c["name"] for c in inspect(self.engine).get_columns("tasks")}
        with self.engine.begin() as conn:
            if "owner" not in columns:
                conn.execute(text("ALTER TABLE tasks ADD COLUMN owner VARCHAR(128)"))
                # No replica of this version runs them: end them before the unique index.
                conn.execute(
                    update(TaskRow)
                    .where(TaskRow.status.in_(ACTIVE))
                    .values(status="failed", error="interrupted: the server stopped")
                )
            if "heartbeat_at" not in columns:
                kind = (
                    "TIMESTAMP WITH TIME ZONE" if self.engine.name == "postgresql" else "DATETIME"
                )
                conn.execute(text(f"ALTER TABLE tasks ADD COLUMN heartbeat_at {kind}"))
        for index in Base.metadata.tables["tasks"].indexes:
            index.create(self.engine, checkfirst=True)

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()

    # channels --------------------------------------------------------------------------------

    @staticmethod
    def _channel(row: ChannelRow) -> Channel:
        return Channel(row.name, row.private, row.mirror_channel_url, row.mirror_mode, row.ttl)

    def channels(self) -> list[Channel]:
        with self.session() as s:
            return [self._channel(r) for r in s.scalars(select(ChannelRow).order_by("name"))]

    def channel(self, name: str) -> Channel | None:
        with self.session() as s:
            row = s.scalar(select(ChannelRow).where(ChannelRow.name == name))
            return self._channel(row) if row else None

    def create_channel(self, channel: Channel, owner_key_id: int | None = None) -> Channel:
        with self._write_lock, self.session() as s:
            s.add(
                ChannelRow(
                    name=channel.name,
                    private=channel.private,
                    mirror_channel_url=channel.mirror_channel_url,
                    mirror_mode=channel.mirror_mode,
                    ttl=channel.ttl,
                )
            )
            if owner_key_id is not None:
                s.add(ChannelRoleRow(key_id=owner_key_id, channel=channel.name, role="owner"))
            try:
                s.commit()
            except IntegrityError:
                raise ChannelExists(channel.name) from None
        return channel

    def upsert_channel(self, channel: Channel) -> None:
        with self._write_lock, self.session() as s:
            row = s.scalar(select(ChannelRow).where(ChannelRow.name == channel.name))
            if row is None:
                row = ChannelRow(name=channel.name)
                s.add(row)
            row.private = channel.private
            row.mirror_channel_url = channel.mirror_channel_url
            row.mirror_mode = channel.mirror_mode
            row.ttl = channel.ttl
            s.commit()

    def delete_channel(self, name: str) -> bool:
        with self._write_lock, self.session() as s:
            row = s.scalar(select(ChannelRow).where(ChannelRow.name == name))
            for role in s.scalars(select(ChannelRoleRow).where(ChannelRoleRow.channel == name)):
                s.delete(role)
            if row is not None:
                s.delete(row)
            s.commit()
            return row is not None

    # keys ------------------------------------------------------------------------------------

    def has_owner(self) -> bool:
        """Whether any unrevoked key holds the server owner role."""
        with self.session() as s:
            query = select(ApiKeyRow.id).where(
                ApiKeyRow.revoked.is_(False), ApiKeyRow.role == "owner"
            )
            return s.scalar(query.limit(1)) is not None

    def create_key(
        self,
        role: str | None,
        channel: str | None = None,
        channel_role: str | None = None,
        description: str = "",
    ) -> tuple[str, int]:
        """A new key (returned once, stored only as its hash) and its id."""
        key = new_key()
        with self._write_lock, self.session() as s:
            row = ApiKeyRow(
                key_hash=hash_key(key), hint=key[:12], role=role, description=description
            )
            s.add(row)
            s.flush()
            if channel is not None:
                s.add(ChannelRoleRow(key_id=row.id, channel=channel, role=channel_role or "member"))
            s.commit()
            return key, row.id

    def keys(self) -> list[KeyInfo]:
        with self.session() as s:
            roles: dict[int, dict[str, str]] = {}
            for r in s.scalars(select(ChannelRoleRow)):
                roles.setdefault(r.key_id, {})[r.channel] = r.role
            return [
                KeyInfo(
                    k.id,
                    k.hint,
                    k.role,
                    roles.get(k.id, {}),
                    k.description,
                    k.created_at,
                    k.revoked,
                )
                for k in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))
            ]

    def revoke_key(self, ident: str) -> int:
        """Revoke by id or by the key's first characters; returns how many keys were revoked."""
        with self._write_lock, self.session() as s:
            if ident.isdigit():
                rows = list(s.scalars(select(ApiKeyRow).where(ApiKeyRow.id == int(ident))))
            else:
                rows = [
                    r
                    for r in s.scalars(select(ApiKeyRow))
                    if ident
                    and (r.hint.startswith(ident) or same_hash(r.key_hash, hash_key(ident)))
                ]
                if len(rows) > 1:
                    return -len(rows)  # ambiguous: revoke nothing
            for row in rows:
                row.revoked = True
            s.commit()
            return len(rows)

    def identify(self, key: str) -> Identity | None:
        """The identity of a valid key, None for an unknown or revoked one."""
        digest = hash_key(key)
        with self.session() as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == digest))
            if row is None or row.revoked or not same_hash(row.key_hash, digest):
                return None
            roles = {
                r.channel: r.role
                for r in s.scalars(select(ChannelRoleRow).where(ChannelRoleRow.key_id == row.id))
            }
            return Identity(row.id, row.role, roles)

    # tasks -----------------------------------------------------------------------------------

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
