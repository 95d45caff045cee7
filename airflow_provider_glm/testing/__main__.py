"""Run the GLM test server from the command line.

``python -m airflow_provider_glm.testing --port 0`` prints the base URL on one line, then serves
until SIGINT or SIGTERM. ``GET /_stats`` on the same host and port answers the counters (see
:mod:`.control`); docs/test-server.md lists every flag.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from airflow_provider_glm.testing.server import GLMTestServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line options.

    :param argv: arguments without the program name; ``sys.argv[1:]`` when None.
    """
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_glm.testing",
                                     description="Serve a GLM-compatible API on loopback.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port, 0 for a free one (default 0)")
    parser.add_argument("--api-key", default="test-key", help="accepted API key (default test-key)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--latency-jitter", type=float, default=0.0, help="extra random latency bound")
    parser.add_argument("--concurrency-limit", type=int, default=None, help="429/1302 above this")
    parser.add_argument("--rate-limit-fraction", type=float, default=0.0, help="random 429/1302 share")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--timestamps-in-seconds", action="store_true",
                        help="file and batch timestamps in seconds instead of milliseconds")
    parser.add_argument("--uppercase-models", action="store_true", help="answer model names upper-cased")
    parser.add_argument("--batch-step-seconds", type=float, default=0.05,
                        help="seconds per batch status step")
    parser.add_argument("--async-delay", type=float, default=0.05,
                        help="seconds an async task stays PROCESSING")
    parser.add_argument("--answers", metavar="FILE", action="append", default=[],
                        help="scripted answers: a JSON array or JSONL file of {match, times, content | json | "
                             "tool_call | web_search | content_filter | finish_reason} (repeatable)")
    parser.add_argument("--echo-key", action="store_true",
                        help="echo the Authorization header in every error message, as some gateways do")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the server, print its base URL and serve until a signal arrives.

    :param argv: arguments without the program name.
    :return: exit status.
    """
    args = parse_args(argv)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    server = GLMTestServer(api_key=args.api_key, latency=args.latency, host=args.host, port=args.port,
                           latency_jitter=args.latency_jitter, concurrency_limit=args.concurrency_limit,
                           rate_limit_fraction=args.rate_limit_fraction, seed=args.seed,
                           timestamps_in_seconds=args.timestamps_in_seconds,
                           uppercase_models=args.uppercase_models,
                           batch_step_seconds=args.batch_step_seconds, async_delay=args.async_delay,
                           echo_key=args.echo_key)
    for path in args.answers:
        try:
            server.load_answers(path)
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"--answers: {exc}\n")
            return 2
    server.start()
    try:
        sys.stdout.write(server.base_url + "\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
