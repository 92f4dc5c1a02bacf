"""The real-server fixtures themselves: SeaweedFS answers S3 with real auth, PostgreSQL connects."""

from __future__ import annotations

import pytest

from tests.realservers import PostgresServer, S3Server


def test_s3_put_get_roundtrip(s3_server: S3Server, s3_bucket: str) -> None:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        s3_bucket,
        endpoint=s3_server.endpoint,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
        region=s3_server.region,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )
    assert list(obstore.list(store)) == []  # a new bucket is empty
    obstore.put(store, "a/b.txt", b"hello")
    assert bytes(obstore.get(store, "a/b.txt").bytes()) == b"hello"
    assert s3_server.create_bucket() != s3_bucket


def test_s3_rejects_a_wrong_secret(s3_server: S3Server, s3_bucket: str) -> None:
    import obstore
    from obstore.exceptions import PermissionDeniedError
    from obstore.store import S3Store

    store = S3Store(
        s3_bucket,
        endpoint=s3_server.endpoint,
        access_key_id=s3_server.access_key,
        secret_access_key="not-the-secret",
        region=s3_server.region,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )
    with pytest.raises(PermissionDeniedError, match="SignatureDoesNotMatch"):
        obstore.put(store, "x", b"1")


def test_postgres_connects(postgres_server: PostgresServer, postgres_url: str) -> None:
    import psycopg

    assert postgres_server.url.startswith("postgresql://")
    with psycopg.connect(postgres_url, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (42)")
        row = conn.execute("SELECT x, current_database() FROM t").fetchone()
    assert row is not None and row[0] == 42
    assert row[1] == postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.url, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
