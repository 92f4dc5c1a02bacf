"""The README's rattler snippet (section "Pointing clients at a mirror") runs as written against
a mirror of the example channel, over file:// and over http:// from `condasync serve DIR`."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT, cli_env, ok
from tests.serve_support import start_serve  # noqa: F401

EXAMPLE = REPO_ROOT / "examples" / "channel"


def readme_snippet() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## Pointing clients at a mirror") :]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None, "no python block in the README's client section"
    code = "\n".join(line[2:] for line in block.group(1).splitlines())
    ast.parse(code)
    return code


def run_snippet(url: str, tmp_path: Path) -> list[str]:
    code = readme_snippet().replace('"file:///path/to/mirror"', repr(url))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**cli_env(), "RATTLER_CACHE_DIR": str(tmp_path / "rattler-cache")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files: list[str] = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    return files


def test_readme_rattler_snippet_over_file_and_http(run_cli, tmp_path: Path, start_serve) -> None:  # noqa: F811
    tree = tmp_path / "mirror"
    ok(run_cli("mirror", EXAMPLE, tree, "-q"))
    from_disk = run_snippet(tree.as_uri(), tmp_path)
    assert any(name.startswith("tinytool-") for name in from_disk), from_disk
    server = start_serve(tree)
    over_http = run_snippet(f"{server.url}/channels/mirror", tmp_path)
    assert over_http == from_disk
