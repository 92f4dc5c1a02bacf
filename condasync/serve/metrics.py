"""The Prometheus metrics of one `condasync serve` process (its own registry, `condasync_` names,
bounded labels only: channel, kind, status class, result) and the small API that feeds them."""

from __future__ import annotations

import contextlib
import time
from collections.abc import MutableMapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: half the text, nothing an alert uses

KINDS = ("index", "shard", "package", "api", "page")
PROXY_RESULTS = ("hit", "miss", "coalesced", "stale", "verify_failed")
SYNC_STATUSES = ("success", "failed")
CONTENT_TYPE = CONTENT_TYPE_LATEST
_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SYNC_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)


def status_class(status: int) -> str:
    return _STATUS_CLASSES.get(status // 100, "5xx")


class ServeMetrics:
    """Every metric `serve` exposes at /metrics. Cheap to feed from the hot path: label
    children are cached, and each update is one lock and an addition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "condasync_http_requests", "HTTP requests answered, by channel, kind and status class",
            ("channel", "kind", "status"), registry=r,
        )  # fmt: skip
        self.response_bytes = Counter(
            "condasync_http_response_bytes", "Response body bytes, by channel, kind and status",
            ("channel", "kind", "status"), registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "condasync_http_request_duration_seconds", "Time to answer a request, by kind",
            ("kind",), buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.proxy_results = Counter(
            "condasync_proxy_results", "Proxy answers: hit, miss, coalesced, stale, verify_failed",
            ("channel", "result"), registry=r,
        )  # fmt: skip
        self.upstream_requests = Counter(
            "condasync_upstream_requests", "Requests a proxy channel sent upstream",
            ("channel",), registry=r,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "condasync_upstream_errors", "Upstream requests that failed (network, timeout, 5xx)",
            ("channel",), registry=r,
        )  # fmt: skip
        self.cache_bytes = Gauge(
            "condasync_proxy_cache_bytes", "Bytes of packages in a proxy channel's cache",
            ("channel",), registry=r,
        )  # fmt: skip
        self.cache_files = Gauge(
            "condasync_proxy_cache_files", "Packages in a proxy channel's cache",
            ("channel",), registry=r,
        )  # fmt: skip
        self.evictions = Counter(
            "condasync_proxy_cache_evictions", "Packages evicted from a proxy cache",
            ("channel",), registry=r,
        )  # fmt: skip
        self.evicted_bytes = Counter(
            "condasync_proxy_cache_evicted_bytes", "Bytes evicted from a proxy cache",
            ("channel",), registry=r,
        )  # fmt: skip
        self.sync_tasks = Counter(
            "condasync_sync_tasks", "Synchronize tasks ended, by channel and final status",
            ("channel", "status"), registry=r,
        )  # fmt: skip
        self.sync_duration = Histogram(
            "condasync_sync_duration_seconds", "Time a synchronize task ran",
            buckets=SYNC_BUCKETS, registry=r,
        )  # fmt: skip
        self.sync_last_success = Gauge(
            "condasync_sync_last_success_timestamp_seconds",
            "Unix time a synchronize task last succeeded", ("channel",), registry=r,
        )  # fmt: skip
        self.downloads = Gauge(
            "condasync_proxy_downloads_in_flight", "Upstream package downloads in progress",
            registry=r,
        )  # fmt: skip
        self.started = Gauge(
            "condasync_process_start_time_seconds", "Unix time this serve process started",
            registry=r,
        )  # fmt: skip
        self.started.set(time.time())
        self._request_children: dict[tuple[str, str, str], tuple[Counter, Counter]] = {}
        self._duration_children = {kind: self.duration.labels(kind) for kind in KINDS}

    # requests --------------------------------------------------------------------------------

    def observe_request(
        self, channel: str, kind: str, status: int, sent: int, seconds: float
    ) -> None:
        key = (channel, kind, status_class(status))
        children = self._request_children.get(key)
        if children is None:
            if len(self._request_children) > 50_000:  # channels come and go; stay bounded
                self._request_children.clear()
            children = (self.requests.labels(*key), self.response_bytes.labels(*key))
            self._request_children[key] = children
        children[0].inc()
        if sent:
            children[1].inc(sent)
        self._duration_children[kind].observe(seconds)

    # proxy channels --------------------------------------------------------------------------

    def proxy_result(self, channel: str, result: str) -> None:
        """One of PROXY_RESULTS for an answer (or a download) of a proxy channel."""
        self.proxy_results.labels(channel, result).inc()

    def upstream_request(self, channel: str, failed: bool = False) -> None:
        self.upstream_requests.labels(channel).inc()
        if failed:
            self.upstream_errors.labels(channel).inc()

    def upstream_error(self, channel: str) -> None:
        """A request already counted by upstream_request that then failed."""
        self.upstream_errors.labels(channel).inc()

    def set_cache(self, channel: str, size: int, files: int) -> None:
        """The proxy cache's current size (by whoever tracks it: the scan or the evictor)."""
        self.cache_bytes.labels(channel).set(size)
        self.cache_files.labels(channel).set(files)

    def cache_added(self, channel: str, size: int) -> None:
        self.cache_bytes.labels(channel).inc(size)
        self.cache_files.labels(channel).inc()

    def cache_evicted(self, channel: str, size: int, files: int = 1) -> None:
        """Packages evicted from a proxy cache (the gauges shrink by as much)."""
        self.evictions.labels(channel).inc(files)
        self.evicted_bytes.labels(channel).inc(size)
        self.cache_bytes.labels(channel).dec(size)
        self.cache_files.labels(channel).dec(files)

    def forget_channel(self, channel: str) -> None:
        """A deleted channel: its gauges go (counters stay until restart, as Prometheus wants)."""
        for gauge in (self.cache_bytes, self.cache_files, self.sync_last_success):
            with contextlib.suppress(KeyError):
                gauge.remove(channel)

    # sync tasks ------------------------------------------------------------------------------

    def sync_finished(self, channel: str, status: str, seconds: float) -> None:
        self.sync_tasks.labels(channel, status).inc()
        self.sync_duration.observe(seconds)
        if status == "success":
            self.sync_last_success.labels(channel).set(time.time())

    # exposition ------------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = ServeMetrics()
"""The process's metrics (one per replica: each exposes its own)."""


def note_cache(scope: MutableMapping[str, Any], channel: str, result: str) -> None:
    """A proxy answer: counted, and named in the request's access log line (`cache`)."""
    scope["condasync.cache"] = result
    METRICS.proxy_result(channel, result)
