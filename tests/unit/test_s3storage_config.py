"""S3Storage set-up without a server: s3:// URLs, AWS_* variables and explicit arguments,
path-style vs virtual-hosted URLs, and what is refused."""

from __future__ import annotations

import pytest

from condasync.errors import UsageError
from condasync.storage import SafetyError
from condasync.storage.s3 import MIN_PART_SIZE, S3Storage, parse_s3_url

ENV = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-example"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://my.bucket-1/conda/forge/", ("my.bucket-1", "conda/forge")),
    ],
)
def test_parse_s3_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["s3://", "s3://ab", "s3://Bucket/x", "s3://bucket/../x", "s3://bucket/a/./b", "/srv/x"],
)
def test_parse_s3_url_refuses(url: str) -> None:
    with pytest.raises(UsageError):
        parse_s3_url(url)


def test_settings_from_aws_variables() -> None:
    env = {**ENV, "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-3"}
    storage = S3Storage("s3://bucket/mirror", env=env)
    config = storage.store.config
    assert storage.label == "s3://bucket/mirror"
    assert config["endpoint"] == "http://127.0.0.1:9000"
    assert config["region"] == "eu-west-3"
    assert config["access_key_id"] == "AKIDEXAMPLE"
    assert config["virtual_hosted_style_request"] in (False, "false")  # custom endpoint: path
    assert storage.store.client_options["allow_http"] in (True, "true")
    assert "secret-example" not in storage.label


def test_settings_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.org")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    storage = S3Storage("s3://bucket")
    assert storage.endpoint == "https://s3.example.org"
    assert storage.region == "ap-south-1"
    assert storage.store.client_options.get("allow_http") in (None, False, "false")


def test_explicit_arguments_win_and_path_style_can_be_forced() -> None:
    env = {**ENV, "AWS_ENDPOINT_URL": "http://ignored:1", "AWS_REGION": "eu-west-3"}
    storage = S3Storage(
        "s3://bucket/p", endpoint="https://minio.internal:9000", region="us-west-2", env=env
    )
    assert storage.store.config["endpoint"] == "https://minio.internal:9000"
    assert storage.store.config["region"] == "us-west-2"
    hosted = S3Storage(
        "s3://bucket/p", endpoint="https://r2.example", force_path_style=False, env=ENV
    )
    assert hosted.store.config["endpoint"] == "https://bucket.r2.example"
    aws = S3Storage("s3://bucket/p", env=ENV)  # AWS itself: virtual-hosted unless forced
    assert aws.store.config["virtual_hosted_style_request"] in (True, "true")
    forced = S3Storage("s3://bucket/p", force_path_style=True, env=ENV)
    assert forced.store.config["virtual_hosted_style_request"] in (False, "false")


def test_refused_settings_and_paths() -> None:
    with pytest.raises(UsageError, match="endpoint"):
        S3Storage("s3://bucket", endpoint="127.0.0.1:9000", env=ENV)
    with pytest.raises(UsageError, match="part size"):
        S3Storage("s3://bucket", part_size=MIN_PART_SIZE - 1, env=ENV)
    storage = S3Storage("s3://bucket/pre/fix", env=ENV)
    assert storage.key("linux-64/a-1-0.conda") == "pre/fix/linux-64/a-1-0.conda"
    assert S3Storage("s3://bucket", env=ENV).key("noarch/x") == "noarch/x"
    for relpath in ("", "../x", "/x", "a/../b", "a//b", "a\\b", ".", "a/\x00"):
        with pytest.raises(SafetyError):
            storage.key(relpath)
