"""Pipeline bench: wall time of a preset's whole lifecycle per stage, the fully cached re-run, and the
overhead of Prefect + MLflow (pipeline wall time minus the sum of the stages' own compute).

    python -m bench.bench_pipeline [--preset tiny]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import PeakRss, save


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--root", help="artifacts root (default: a fresh temporary folder)")
    args = ap.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from conf.loader import load_config
    from flows.lifecycle import lifecycle

    root = args.root or tempfile.mkdtemp(prefix="lmforge-bench-pipeline-")
    cfg = load_config(
        args.preset, overrides=[f"artifacts_root={root}", "tracking.experiment=lmforge-bench-pipeline"]
    )
    with PeakRss() as rss:
        t0 = time.perf_counter()
        first = lifecycle(cfg)
        cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = lifecycle(cfg)
    cached = time.perf_counter() - t0
    stage_sum = sum(r.manifest.seconds for r in first.results.values() if r.status == "ran")
    rows = [
        {"bench": f"pipeline/{name}", "status": r.status, "seconds": round(r.manifest.seconds, 2)}
        for name, r in first.results.items()
    ]
    rows += [
        {"bench": "pipeline/total (cold)", "status": "ran", "seconds": round(cold, 2)},
        {"bench": "pipeline/stages' own compute", "status": "", "seconds": round(stage_sum, 2)},
        {
            "bench": "pipeline/Prefect + MLflow overhead",
            "status": "",
            "seconds": round(cold - stage_sum, 2),
            "share": f"{(cold - stage_sum) / cold:.1%}",
        },
        {
            "bench": "pipeline/total (cached re-run)",
            "status": ",".join(sorted({r.status for r in second.results.values()})),
            "seconds": round(cached, 2),
        },
    ]
    return save("pipeline", rows, {"preset": args.preset, "root": root, "peak_rss_mb": rss.peak_mb})


if __name__ == "__main__":
    main()
