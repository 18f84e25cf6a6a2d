"""`make bench`: run every `bench/bench_*.py` (or the ones named), then log all tables to MLflow.

Each bench module has `main() -> Path` returning its results JSON (see bench/common.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from bench.common import RESULTS_DIR, log_to_mlflow


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benches to run (default: all of {', '.join(available())})")
    parser.add_argument("--no-mlflow", action="store_true", help="skip logging the tables to MLflow")
    args = parser.parse_args(argv)
    names = args.names or available()
    unknown = set(names) - set(available())
    if unknown:
        parser.error(f"unknown bench(es) {', '.join(sorted(unknown))}; available: {', '.join(available())}")
    results, failed = [], []
    for name in names:
        t0 = time.perf_counter()
        print(f"=== bench {name}", flush=True)
        try:
            module = importlib.import_module(f"bench.bench_{name}")
            saved_argv, sys.argv = sys.argv, [module.__name__]  # each bench runs with its own defaults
            try:
                results.append(module.main())
            finally:
                sys.argv = saved_argv
        except Exception as e:  # keep going: one broken bench should not hide the others' numbers
            failed.append(name)
            print(f"bench {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
        print(f"=== bench {name} took {time.perf_counter() - t0:.1f}s", flush=True)
    summary = RESULTS_DIR / "SUMMARY.md"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    summary.write_text(
        "\n".join(p.with_suffix(".md").read_text() for p in results if p.with_suffix(".md").exists())
    )
    if results and not args.no_mlflow:
        run_id = log_to_mlflow(results)
        print(f"logged to MLflow run {run_id} (experiment lmforge-bench)")
    print(f"tables: {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
