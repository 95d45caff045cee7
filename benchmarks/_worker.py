"""Run one measurement in a fresh process: ``python -m benchmarks._worker module:function '<json params>'``.

The function gets the params dict and returns a JSON-able dict, printed on the last line after
``BENCH_RESULT `` (anything else the code under test prints is ignored). An exception becomes
``{"error": ...}`` so the harness reports it.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback


def main() -> int:
    target, raw = sys.argv[1], sys.argv[2]
    module_name, _, func_name = target.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        result = func(json.loads(raw))
    except BaseException as exc:  # noqa: BLE001 - reported to the harness
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    sys.stdout.flush()
    sys.stdout.write("\nBENCH_RESULT " + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
