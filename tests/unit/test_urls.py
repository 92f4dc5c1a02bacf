"""Tests of URL normalisation and secret masking."""

from __future__ import annotations

import pytest

from condasync.channel.urls import mask_url, normalize_channel, secrets_of, strip_userinfo


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("https://conda.anaconda.org/t/tk-123abc/private", "tk-123abc"),
        ("https://user:hunter2@host.example/channel", "hunter2"),
        ("https://alice:pw@host.example/t/tok/x", "tok"),
    ],
)
def test_mask(url: str, secret: str) -> None:
    assert secret in secrets_of(url)
    assert secret not in mask_url(url)


def test_normalize(tmp_path: object) -> None:
    assert normalize_channel("https://x.org/chan/") == "https://x.org/chan"
    assert normalize_channel("/srv/chan") == "file://localhost/srv/chan"
    assert normalize_channel("file:///srv/chan") == "file://localhost/srv/chan"
    with pytest.raises(ValueError):
        normalize_channel("ftp://x.org/chan")


def test_strip_userinfo() -> None:
    assert strip_userinfo("https://u:p%40ss@h:8080/c") == ("https://h:8080/c", ("u", "p@ss"))
    assert strip_userinfo("https://h/c") == ("https://h/c", None)
