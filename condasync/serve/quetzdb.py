"""The queries behind quetz's user, member and job endpoints: API keys stand in for users, a
key's channel roles are the channel's members, and sync tasks are the jobs."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from condasync.serve.db import Database, Task
from condasync.serve.rows import ApiKeyRow, ChannelRoleRow, TaskRow


@dataclass(frozen=True)
class KeyUser:
    """An unrevoked API key as quetz sees a user: id, description, server role."""

    id: int
    description: str
    role: str | None


@dataclass(frozen=True)
class Member:
    key: KeyUser
    role: str


def key_users(db: Database, query: str = "") -> list[KeyUser]:
    """Unrevoked keys, by id; `query` keeps those whose user name (`key-<id>`) or
    description contains it."""
    needle = query.strip().lower()
    with db.session() as s:
        rows = s.scalars(
            select(ApiKeyRow).where(ApiKeyRow.revoked.is_(False)).order_by(ApiKeyRow.id)
        )
        users = [KeyUser(r.id, r.description, r.role) for r in rows]
    if not needle:
        return users
    return [u for u in users if needle in f"key-{u.id}" or needle in u.description.lower()]


def key_user(db: Database, key_id: int) -> KeyUser | None:
    with db.session() as s:
        row = s.get(ApiKeyRow, key_id)
        if row is None or row.revoked:
            return None
        return KeyUser(row.id, row.description, row.role)


def members(db: Database, channel: str) -> list[Member]:
    """The unrevoked keys with a role on the channel, by key id."""
    with db.session() as s:
        rows = s.execute(
            select(ApiKeyRow, ChannelRoleRow.role)
            .join(ChannelRoleRow, ChannelRoleRow.key_id == ApiKeyRow.id)
            .where(ChannelRoleRow.channel == channel, ApiKeyRow.revoked.is_(False))
            .order_by(ApiKeyRow.id)
        ).all()
        return [Member(KeyUser(k.id, k.description, k.role), role) for k, role in rows]


def member_counts(db: Database) -> dict[str, int]:
    """channel -> number of unrevoked keys with a role on it."""
    with db.session() as s:
        rows = s.execute(
            select(ChannelRoleRow.channel, func.count())
            .join(ApiKeyRow, ChannelRoleRow.key_id == ApiKeyRow.id)
            .where(ApiKeyRow.revoked.is_(False))
            .group_by(ChannelRoleRow.channel)
        ).all()
        return {channel: int(n) for channel, n in rows}


def set_member(db: Database, channel: str, key_id: int, role: str) -> None:
    """Give a key a role on a channel (an existing role is replaced, as quetz does)."""
    with db.session() as s:
        row = s.scalar(
            select(ChannelRoleRow).where(
                ChannelRoleRow.channel == channel, ChannelRoleRow.key_id == key_id
            )
        )
        if row is None:
            s.add(ChannelRoleRow(key_id=key_id, channel=channel, role=role))
        else:
            row.role = role
        s.commit()


def remove_member(db: Database, channel: str, key_id: int) -> bool:
    with db.session() as s:
        row = s.scalar(
            select(ChannelRoleRow).where(
                ChannelRoleRow.channel == channel, ChannelRoleRow.key_id == key_id
            )
        )
        if row is None:
            return False
        s.delete(row)
        s.commit()
        return True


def set_server_role(db: Database, key_id: int, role: str | None) -> bool:
    with db.session() as s:
        row = s.get(ApiKeyRow, key_id)
        if row is None or row.revoked:
            return False
        row.role = role
        s.commit()
        return True


def tasks(db: Database, statuses: list[str]) -> list[Task]:
    """Tasks with one of these statuses, by id."""
    with db.session() as s:
        ids = s.scalars(
            select(TaskRow.id).where(TaskRow.status.in_(statuses)).order_by(TaskRow.id)
        ).all()
    found = (db.task(i) for i in ids)
    return [t for t in found if t is not None]
