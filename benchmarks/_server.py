"""The GLM test server as a separate process, controlled by JSON lines on stdin.

``python -m benchmarks._server --latency 0.1`` prints ``{"base_url": ...}``, then answers one JSON line
per command line: ``{"op": "stats"}`` (counters), ``{"op": "window"}`` (first request read and last
answer finished, on the system-wide monotonic clock, so a worker's ``time.monotonic()`` compares),
``{"op": "reset"}``, ``{"op": "cpu"}`` (this process's CPU seconds),
``{"op": "set", "name": ..., "value": ...}`` and ``{"op": "quit"}``. End of stdin also stops it, so a
dying harness never leaves it behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
from typing import Any

from airflow_provider_glm.testing import GLMTestServer


def _stats(server: GLMTestServer) -> dict[str, Any]:
    stats = server.stats
    if dataclasses.is_dataclass(stats):
        out = dataclasses.asdict(stats)
    else:  # pragma: no cover - a future ServerStats that is not a dataclass
        out = {k: getattr(stats, k) for k in ("requests", "billed_responses", "peak_in_flight")}
    out["status_counts"] = {str(k): v for k, v in out.get("status_counts", {}).items()}
    return out


def _window(server: GLMTestServer) -> dict[str, Any]:
    records = server.requests
    starts = [r.started_at for r in records if r.started_at]
    ends = [r.ended_at for r in records if r.ended_at]
    durations = sorted(r.ended_at - r.started_at for r in records if r.ended_at and r.started_at)
    return {
        "first_start": min(starts) if starts else None,
        "last_end": max(ends) if ends else None,
        "count": len(records),
        "median_duration": durations[len(durations) // 2] if durations else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._server")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--concurrency-limit", type=int, default=None)
    parser.add_argument(
        "--auto-reset",
        type=float,
        default=0.0,
        help="forget records every N seconds (long runs: keeps the server's memory flat)",
    )
    args = parser.parse_args()
    server = GLMTestServer(api_key="test-key", latency=args.latency, concurrency_limit=args.concurrency_limit)
    server.start()
    stop = threading.Event()
    if args.auto_reset > 0:

        def _trim() -> None:
            while not stop.wait(args.auto_reset):
                server.reset()

        threading.Thread(target=_trim, daemon=True).start()
    print(json.dumps({"base_url": server.base_url}), flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command.get("op")
            if op == "quit":
                break
            if op == "stats":
                answer: dict[str, Any] = _stats(server)
            elif op == "window":
                answer = _window(server)
            elif op == "reset":
                server.reset()
                answer = {}
            elif op == "cpu":
                times = os.times()
                answer = {"cpu": times.user + times.system}
            elif op == "set":
                setattr(server, command["name"], command["value"])
                answer = {}
            else:
                answer = {"error": f"unknown op {op!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        stop.set()
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
