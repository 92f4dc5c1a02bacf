"""The task claims that keep replicas from running a sync twice, straight at the database layer,
on SQLite and on a real PostgreSQL: two `Database` objects stand for two replicas."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from condasync.serve.db import Database, Task, engine_url, replica_id


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_engine_url_picks_psycopg() -> None:
    assert engine_url("postgresql://u@h:5/d") == "postgresql+psycopg://u@h:5/d"
    assert engine_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert engine_url("postgresql+asyncpg://u@h/d") == "postgresql+asyncpg://u@h/d"
    assert engine_url("sqlite:///x.db") == "sqlite:///x.db"


def test_one_active_task_per_channel_across_replicas(db_url: str) -> None:
    a, b = Database(db_url), Database(db_url)
    me_a, me_b = replica_id(), "another-host:1:beef"  # one process: the other must look remote
    try:
        # racing creations: exactly one wins, whatever the interleaving
        results: list[tuple[str, Task | None]] = []
        barrier = threading.Barrier(8)

        def create(db: Database, me: str) -> None:
            barrier.wait()
            results.append((me, db.create_task("ch", "synchronize", None, None, owner=me)))

        threads = [
            threading.Thread(target=create, args=((a, me_a) if i % 2 else (b, me_b)))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [(me, task) for me, task in results if task is not None]
        assert len(won) == 1, results
        claimer, task = won[0]
        active = a.active_task("ch")
        assert active is not None and active.id == task.id
        # only the owner claims it, and only once
        other = me_b if claimer == me_a else me_a
        assert not a.claim_task(task.id, other)
        assert a.claim_task(task.id, claimer)
        assert not b.claim_task(task.id, claimer)
        running = a.task(task.id)
        assert running is not None and running.status == "running"
        # a live replica's task is not reaped by another; a finished one frees the channel
        assert b.interrupt_stale_tasks(other, stale_after=30) == 0
        a.update_task(task.id, status="success")
        assert b.create_task("ch", "synchronize", None, None, owner=other) is not None
    finally:
        a.close()
        b.close()


def test_stale_and_dead_owners_are_reaped(db_url: str) -> None:
    db = Database(db_url)
    try:
        me = replica_id()
        host = me.split(":", 1)[0]
        dead = db.create_task("dead", "synchronize", None, None, owner=f"{host}:999999999:00")
        silent = db.create_task("silent", "synchronize", None, None, owner="elsewhere:1:00")
        live = db.create_task("live", "synchronize", None, None, owner="elsewhere:2:00")
        assert dead and silent and live
        assert db.interrupt_stale_tasks(me, stale_after=30) == 1  # the dead pid on this host
        assert db.task(dead.id).status == "failed"  # type: ignore[union-attr]
        assert db.interrupt_stale_tasks(me, stale_after=-1) == 2  # no heartbeat within the limit
        assert db.task(live.id).status == "failed"  # type: ignore[union-attr]
    finally:
        db.close()
