"""Credentials in the URL work and are never printed, nor written into the published tree."""

from __future__ import annotations

from tests.conftest import assert_consistent, disk_packages, mirror_args, real_files, tree_bytes
from tests.servers import ChannelServer, FaultServer, free_port

TOKEN = "SECRET123"
USER, PASSWORD = "alice-SECRETUSER", "pw-SECRET456"


def assert_hidden(result, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in result.stdout, f"{secret} printed on stdout:\n{result.stdout}"
        assert secret not in result.stderr, f"{secret} printed on stderr:\n{result.stderr}"


def assert_not_in_tree(root, *secrets: str) -> None:
    for name, data in tree_bytes(root).items():
        for secret in secrets:
            assert secret.encode() not in data, f"{secret} written into {name}"


def test_token_url_works_and_is_masked(real_channel, mirror_dir, run_cli):
    with ChannelServer(real_channel.root, token=TOKEN) as server:
        url = f"{server.url}/t/{TOKEN}/"
        result = run_cli(*mirror_args(url, mirror_dir, "--json"))
        assert result.returncode == 0, str(result)
        requests = server.log()
        again = run_cli(*mirror_args(url, mirror_dir))  # the no-op run, plain output
        assert again.returncode == 0, str(again)
        assert_hidden(again, TOKEN)
    assert requests and all(r.raw_path.startswith(f"/t/{TOKEN}/") for r in requests)
    assert all(r.status != 401 for r in requests)
    assert_hidden(result, TOKEN)
    assert TOKEN not in result.json()["url"]
    for sub, files in real_files(real_channel).items():
        assert disk_packages(mirror_dir, sub) == files
    assert_not_in_tree(mirror_dir, TOKEN)


def test_token_masked_in_plain_output_and_on_errors(real_channel, mirror_dir, run_cli):
    with FaultServer(real_channel.root, token=TOKEN) as server:
        url = f"{server.url}/t/{TOKEN}"
        plain = run_cli(*mirror_args(url, mirror_dir))
        assert plain.returncode == 0, str(plain)
        assert_hidden(plain, TOKEN)
        # a failing package: its error message must not leak the URL's token
        real_channel.reupload("noarch", "dependent-2.0-0.conda", b"changed" * 100)
        real_channel.write()
        server.fault("/noarch/dependent-2.0-0.conda", "500")
        failing = run_cli(*mirror_args(url, mirror_dir, "--retries", "1", "--json"))
        assert failing.returncode == 1, str(failing)
        assert_hidden(failing, TOKEN)
        assert "dependent-2.0-0.conda" in failing.json()["failed"]
        # a wrong token: 401 on the index -> upstream error, still masked
        bad = run_cli(*mirror_args(f"{server.url}/t/WRONG-SECRET789", mirror_dir, "--retries", "1"))
        assert bad.returncode == 3, str(bad)
        assert_hidden(bad, "WRONG-SECRET789")
    # upstream unreachable with a token
    down = run_cli(
        *mirror_args(
            f"http://127.0.0.1:{free_port()}/t/{TOKEN}", mirror_dir, "--retries", "1", "--json"
        )
    )
    assert down.returncode == 3, str(down)
    assert_hidden(down, TOKEN)
    assert_consistent(mirror_dir)


def test_userinfo_url_works_and_is_masked(real_channel, mirror_dir, run_cli):
    with ChannelServer(real_channel.root, auth=(USER, PASSWORD)) as server:
        url = f"http://{USER}:{PASSWORD}@127.0.0.1:{server.port}"
        result = run_cli(*mirror_args(url, mirror_dir, "--json"))
        assert result.returncode == 0, str(result)
        assert all(r.status != 401 for r in server.log())
        assert_hidden(result, USER, PASSWORD)
        assert PASSWORD not in result.json()["url"]
        assert_not_in_tree(mirror_dir, USER, PASSWORD)
        for sub, files in real_files(real_channel).items():
            assert disk_packages(mirror_dir, sub) == files

        wrong = run_cli(
            *mirror_args(
                f"http://{USER}:wrong-SECRET000@127.0.0.1:{server.port}",
                mirror_dir,
                "--retries",
                "1",
            )
        )
        assert wrong.returncode == 3, str(wrong)
        assert_hidden(wrong, USER, "wrong-SECRET000")
    down = run_cli(*mirror_args(url, mirror_dir, "--retries", "1"))
    assert down.returncode == 3, str(down)
    assert_hidden(down, USER, PASSWORD)
