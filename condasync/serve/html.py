"""PURE: the HTML of the pages people browse (front page, channel, package, login), as plain
strings with every value escaped (repodata is untrusted input); inline CSS, no CDN, no assets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from condasync.serve.summary import BuildRow, PackageRow

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2329;background:#fafbfc}
header{background:#243447;color:#fff;padding:.6em 1.5em;display:flex;gap:1.5em;align-items:center}
header a{color:#fff;text-decoration:none}header .who{margin-left:auto;font-size:.9em}
main{padding:1em 1.5em;max-width:72em}h1{font-size:1.5em;margin:.3em 0}
table{border-collapse:collapse;width:100%;margin:.6em 0;background:#fff}
th,td{border-bottom:1px solid #dde2e7;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}code,.mono{font-family:ui-monospace,monospace;font-size:.9em}
.muted{color:#66707a}.tag{display:inline-block;padding:0 .5em;border-radius:.6em;font-size:.85em;
background:#e3e8ee}.ok{background:#d4f2dc}.bad{background:#f8d7da}.run{background:#fff1c2}
form.inline{display:inline}input[type=search],input[type=password]{padding:.3em;width:20em}
button{padding:.3em 1em;cursor:pointer}pre{background:#eef1f4;padding:.6em;overflow:auto}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}
"""


@dataclass(frozen=True)
class Viewer:
    """Who looks at a page: a label for the header, and the CSRF token of their cookie."""

    label: str | None = None  # None: no key
    csrf: str | None = None  # set only for a browser session (cookie)


@dataclass(frozen=True)
class ChannelInfo:
    name: str
    mode: str  # "proxy", "mirror" or "static"
    upstream: str | None
    private: bool
    url: str  # the client URL
    last_sync: dict[str, Any] | None = None  # the last task (status, finished_at, ...)


def e(value: object) -> str:
    return escape(str(value), quote=True)


def page(title: str, body: str, viewer: Viewer, next_path: str = "/") -> str:
    if viewer.label is None:
        who = f'<a href="/login?{urlencode({"next": next_path})}">log in with an API key</a>'
    else:
        logout = ""
        if viewer.csrf:
            logout = (
                '<form class="inline" method="post" action="/logout">'
                f'<input type="hidden" name="csrf" value="{e(viewer.csrf)}">'
                "<button>log out</button></form>"
            )
        who = f"key {e(viewer.label)} {logout}"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · condasync</title><style>{CSS}</style></head><body>"
        '<header><a href="/"><b>condasync</b></a><a href="/docs">API docs</a>'
        f'<span class="who">{who}</span></header><main>{body}</main></body></html>'
    )


def status_tag(status: str | None) -> str:
    if not status:
        return '<span class="muted">never</span>'
    kind = {"success": "ok", "failed": "bad", "running": "run", "pending": "run"}.get(status, "")
    return f'<span class="tag {kind}">{e(status)}</span>'


def front(channels: Sequence[ChannelInfo], viewer: Viewer) -> str:
    rows = []
    for c in channels:
        last = c.last_sync or {}
        when = _when(last.get("finished_at") or last.get("started_at") or last.get("created_at"))
        sync = f"{status_tag(last.get('status'))} {when}" if c.mode == "mirror" else "—"
        private = ' <span class="tag">private</span>' if c.private else ""
        rows.append(
            f'<tr><td><a href="/channels/{quote(c.name)}/">{e(c.name)}</a>{private}</td>'
            f"<td>{e(c.mode)}</td><td class=mono>{e(c.upstream or '—')}</td><td>{sync}</td>"
            f"<td><code>{e(c.url)}</code></td></tr>"
        )
    table = (
        "<table><tr><th>channel</th><th>mode</th><th>upstream</th><th>last synchronize</th>"
        f"<th>client URL</th></tr>{''.join(rows)}</table>"
        if rows
        else '<p class="muted">No channels to show.'
        + (" Log in with an API key to see private channels." if viewer.label is None else "")
        + "</p>"
    )
    body = (
        "<h1>Channels</h1>"
        f"{table}<p>Point conda, mamba or pixi at a client URL: <code>conda install -c "
        'URL PACKAGE</code>. The JSON API is documented at <a href="/docs">/docs</a> '
        '(schema: <a href="/openapi.json">/openapi.json</a>).</p>'
    )
    return page("channels", body, viewer)


def channel_page(
    info: ChannelInfo,
    packages: Sequence[PackageRow],
    total: int,
    query: str,
    offset: int,
    viewer: Viewer,
    extra: str = "",
    cached: set[str] | None = None,
    page_size: int = 200,
) -> str:
    base = f"/channels/{quote(info.name)}"
    head = [
        f"<h1>{e(info.name)}</h1><dl><dt>mode</dt><dd>{e(info.mode)}"
        f"{' (private)' if info.private else ''}</dd>"
    ]
    if info.upstream:
        head.append(f"<dt>upstream</dt><dd class=mono>{e(info.upstream)}</dd>")
    head.append(f"<dt>client URL</dt><dd><code>{e(info.url)}</code></dd></dl>")
    search = (
        f'<form method="get" action="{base}/"><input type="search" name="q" '
        f'value="{e(query)}" placeholder="filter by name" aria-label="filter by name"> '
        "<button>search</button></form>"
    )
    rows = []
    for p in packages:
        mark = ""
        if cached is not None:
            mark = "<td>cached</td>" if p.name in cached else '<td class="muted">—</td>'
        rows.append(
            f'<tr><td><a href="{base}/packages/{quote(p.name)}">{e(p.name)}</a></td>'
            f"<td>{e(p.latest)}</td><td>{e(', '.join(p.subdirs))}</td>"
            f"<td>{e(p.summary)}</td><td>{e(p.license)}</td>{mark}</tr>"
        )
    cached_head = "<th>in cache</th>" if cached is not None else ""
    shown = f"{offset + 1}–{offset + len(packages)} of {total}" if packages else f"0 of {total}"
    pager = _pager(base, query, offset, total, page_size)
    table = (
        f"<p class=muted>packages {shown}{' matching ' + e(repr(query)) if query else ''}</p>"
        "<table><tr><th>package</th><th>latest version</th><th>subdirs</th><th>summary</th>"
        f"<th>license</th>{cached_head}</tr>{''.join(rows)}</table>{pager}"
    )
    body = "".join(head) + extra + "<h2>Packages</h2>" + search + table
    return page(info.name, body, viewer, f"{base}/")


def _pager(base: str, query: str, offset: int, total: int, size: int) -> str:
    links = []
    if offset > 0:
        args = urlencode({"q": query, "offset": max(0, offset - size)})
        links.append(f'<a href="{base}/?{args}">previous</a>')
    if offset + size < total:
        args = urlencode({"q": query, "offset": offset + size})
        links.append(f'<a href="{base}/?{args}">next</a>')
    return f"<p>{' · '.join(links)}</p>" if links else ""


def history(tasks: Iterable[dict[str, Any]], can_sync: bool, name: str, csrf: str | None) -> str:
    """A mirror channel's last tasks, and the Synchronize button for a maintainer."""
    rows = []
    for t in tasks:
        report = t.get("report") or {}
        counts = " · ".join(
            f"{k} {_count(report.get(k))}" for k in ("added", "replaced", "deleted", "failed")
        )
        rows.append(
            f"<tr><td>{e(t['id'])}</td><td>{status_tag(t.get('status'))}</td>"
            f"<td>{_when(t.get('started_at') or t.get('created_at'))}</td>"
            f"<td>{_duration(t.get('started_at'), t.get('finished_at'))}</td>"
            f"<td>{e(counts) if report else ''}</td><td>{e(t.get('error') or '')}</td></tr>"
        )
    table = (
        "<table><tr><th>task</th><th>status</th><th>started</th><th>duration</th>"
        f"<th>counts</th><th>error</th></tr>{''.join(rows)}</table>"
        if rows
        else '<p class="muted">Never synchronized.</p>'
    )
    button = ""
    if can_sync:
        button = (
            f'<form id="sync" method="post" action="/channels/{quote(name)}/synchronize">'
            f'<input type="hidden" name="csrf" value="{e(csrf or "")}">'
            '<button id="sync-button">Synchronize</button> <span id="sync-result"></span></form>'
            f"<script>{_SYNC_JS}</script>"
        )
    return f"<h2>Synchronize history</h2>{button}{table}"


# The button calls the API (PUT /api/channels/<name>/actions) with the session cookie and the
# CSRF token in a header; without JavaScript the form posts the same token to the page.
_SYNC_JS = """
document.getElementById('sync').addEventListener('submit', async function (ev) {
  ev.preventDefault();
  const out = document.getElementById('sync-result');
  const name = location.pathname.split('/')[2];
  const token = this.elements.csrf.value;
  const r = await fetch('/api/channels/' + name + '/actions', {method: 'PUT',
    credentials: 'same-origin', headers: {'Content-Type': 'application/json',
    'X-CSRF-Token': token}, body: JSON.stringify({action: 'synchronize'})});
  const body = await r.json().catch(() => ({}));
  out.textContent = r.ok ? 'task ' + body.id + ' ' + body.status
                         : 'failed: ' + (body.detail || r.status);
  if (r.ok) setTimeout(() => location.reload(), 1500);
});
"""


def cache_panel(size: int, files: int, hit_ratio: float | None, hits: int, misses: int) -> str:
    ratio = f"{hit_ratio:.0%}" if hit_ratio is not None else "—"
    return (
        f"<h2>Cache</h2><dl><dt>cached</dt><dd>{files} packages, {_bytes(size)}</dd>"
        f"<dt>hit ratio</dt><dd>{ratio} ({hits} hits, {misses} misses)</dd></dl>"
    )


def package_page(
    info: ChannelInfo, package: PackageRow, builds: Sequence[BuildRow], viewer: Viewer
) -> str:
    base = f"/channels/{quote(info.name)}"
    name = package.name
    install = (
        f"conda install -c {info.url} {name}\n"
        f"mamba install -c {info.url} {name}\n"
        f"pixi workspace channel add {info.url} && pixi add {name}"
    )
    sections = []
    for subdir in dict.fromkeys(b.subdir for b in builds):
        rows = "".join(
            f"<tr><td>{e(b.version)}</td><td>{e(b.build)}</td>"
            f'<td><a href="{base}/{quote(b.subdir)}/{quote(b.fn)}">{e(b.fn)}</a></td>'
            f"<td>{_bytes(b.size)}</td><td>{_stamp(b.timestamp)}</td>"
            f"<td class=mono>{e(b.sha256)}</td></tr>"
            for b in builds
            if b.subdir == subdir
        )
        sections.append(
            f"<h3>{e(subdir)}</h3><table><tr><th>version</th><th>build</th><th>file</th>"
            f"<th>size</th><th>date</th><th>sha256</th></tr>{rows}</table>"
        )
    body = (
        f'<p><a href="{base}/">{e(info.name)}</a> /</p><h1>{e(name)}</h1>'
        f"<dl><dt>latest version</dt><dd>{e(package.latest)}</dd>"
        f"<dt>summary</dt><dd>{e(package.summary or '—')}</dd>"
        f"<dt>license</dt><dd>{e(package.license or '—')}</dd></dl>"
        f"<h2>Install</h2><pre>{e(install)}</pre><h2>Versions and builds</h2>" + "".join(sections)
    )
    return page(f"{name} · {info.name}", body, viewer, f"{base}/packages/{quote(name)}")


def login_page(next_path: str, viewer: Viewer, message: str = "") -> str:
    note = f'<p class="bad tag">{e(message)}</p>' if message else ""
    body = (
        f"<h1>Log in</h1>{note}<p>Paste an API key (<code>condasync apikey create</code>). "
        "It is kept in a cookie for this site only.</p>"
        '<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{e(next_path)}">'
        '<input type="password" name="key" autocomplete="off" aria-label="API key" '
        'placeholder="API key"> <button>log in</button></form>'
    )
    return page("log in", body, viewer, next_path)


def _count(value: Any) -> int:
    return len(value) if isinstance(value, (list, dict)) else int(value or 0)


def _parse(when: Any) -> datetime | None:
    if not isinstance(when, str):
        return None
    try:
        moment = datetime.fromisoformat(when)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _when(when: Any) -> str:
    moment = _parse(when)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def _duration(start: Any, end: Any) -> str:
    a, b = _parse(start), _parse(end)
    if a is None or b is None:
        return ""
    return f"{(b - a).total_seconds():.1f} s"


def _stamp(ms: int) -> str:
    if not ms:
        return ""
    seconds = ms / 1000 if ms > 10**11 else ms  # conda timestamps are ms (old ones seconds)
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d")


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
