"""Prometheus text-format metrics for ``GET /metrics`` (exposition format 0.0.4), without a client library.

* ``edgekd_requests_total{model, endpoint, code}``: requests answered, by HTTP status;
* ``edgekd_request_duration_seconds{model, endpoint}``: histogram of the time from the request's arrival to
  its answer (queueing, batching and inference included);
* ``edgekd_batch_size{model}``: histogram of rows per model call (what micro-batching achieved);
* ``edgekd_inference_duration_seconds{model}``: histogram of model-call time;
* ``edgekd_queue_depth{model}``: requests waiting now.

Labels only take values the server chose (served model names, route names): a client cannot grow the label
space by sending unknown names (those count as ``model="unknown"``).

Example:
    >>> m = Metrics()
    >>> m.observe_request("tinycnn", "infer", 200, 0.004)
    >>> print(m.render({"tinycnn": 0}))
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Sequence

__all__ = ["Metrics", "LATENCY_BUCKETS", "BATCH_BUCKETS"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        out, total = [], 0
        for le, n in zip((*map(_num, self.buckets), "+Inf"), self.counts):
            total += n
            out.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{le}"}} {total}')
        return out + [f"{name}_sum{{{labels}}} {self.sum!r}", f"{name}_count{{{labels}}} {total}"]


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and v >= 1 else repr(float(v))


def _escape(value: str | int) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**kv: str | int) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in kv.items())


class Metrics:
    """Counters and histograms updated from the event loop (single-threaded: no locks needed)."""

    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.latency: dict[tuple[str, str], _Histogram] = {}
        self.batch: dict[str, _Histogram] = {}
        self.inference: dict[str, _Histogram] = {}

    def observe_request(self, model: str, endpoint: str, code: int, seconds: float) -> None:
        self.requests[(model, endpoint, code)] += 1
        self.latency.setdefault((model, endpoint), _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, model: str, rows: int, seconds: float) -> None:
        self.batch.setdefault(model, _Histogram(BATCH_BUCKETS)).observe(rows)
        self.inference.setdefault(model, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def render(self, queue_depth: dict[str, int]) -> str:
        """The exposition text; ``queue_depth`` gives the current queue length per model."""
        out = [
            "# HELP edgekd_requests_total Requests answered, by model, endpoint and HTTP status.",
            "# TYPE edgekd_requests_total counter",
        ]
        out += [
            f"edgekd_requests_total{{{_labels(model=m, endpoint=e, code=c)}}} {n}"
            for (m, e, c), n in sorted(self.requests.items())
        ]
        out += [
            "# HELP edgekd_request_duration_seconds Time from request arrival to answer.",
            "# TYPE edgekd_request_duration_seconds histogram",
        ]
        for (m, e), h in sorted(self.latency.items()):
            out += h.lines("edgekd_request_duration_seconds", _labels(model=m, endpoint=e))
        out += ["# HELP edgekd_batch_size Rows per model call (micro-batching).", "# TYPE edgekd_batch_size histogram"]
        for m, h in sorted(self.batch.items()):
            out += h.lines("edgekd_batch_size", _labels(model=m))
        out += [
            "# HELP edgekd_inference_duration_seconds Time of one model call.",
            "# TYPE edgekd_inference_duration_seconds histogram",
        ]
        for m, h in sorted(self.inference.items()):
            out += h.lines("edgekd_inference_duration_seconds", _labels(model=m))
        out += ["# HELP edgekd_queue_depth Requests waiting for a batch.", "# TYPE edgekd_queue_depth gauge"]
        out += [f"edgekd_queue_depth{{{_labels(model=m)}}} {d}" for m, d in sorted(queue_depth.items())]
        return "\n".join(out) + "\n"
