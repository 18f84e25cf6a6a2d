"""Scale bench: the data flow (collect -> filter -> dedup -> scrub) on a generated web-like corpus at two
sizes, per stage MB/s and peak RSS, and how both grow from the small size to the large one.

The corpus is `bench/webcorpus.py` (seeded: web pages with boilerplate, lists, spam, PII, ~10% near
duplicates), written as one JSONL file read by a `files` source, as a user's own corpus would be. Each
stage runs in a fresh child process (`run_stage`, as the pipeline runs it, with its content-addressed
folder and manifest), so its peak RSS is its own: the child and its worker processes, sampled every 50 ms.
MB/s is the stage's input bytes (the corpus file for collect, the upstream stage's shards otherwise) over
the stage's own seconds (imports and process start excluded). `mb_per_cpu_s` divides by the CPU seconds of
the stage's processes instead: the figure that holds on a machine shared with other work (with N idle
cores and N workers, MB/s approaches N x it, less the start-up of the workers).

Growth rows compare the large size with the small one: targets are time x(data ratio) +- 20% (linear)
and flat peak memory for the bounded-memory paths (filter, scrub, dedup on disk). dedup runs with each
method given by `--dedup-methods` (default: both, so the table shows what the disk method buys).

    python -m bench.bench_scale [--docs 50000,200000] [--scale 0.25] [--workers 2] \
        [--dedup-methods disk,memory] [--max-memory-mb 1024] [--keep DIR]
    make bench BENCH=scale            # the default sizes (about 15 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil

from bench.common import save
from bench.webcorpus import WebCorpus

ROOT = Path(__file__).resolve().parents[1]
BOUNDED = {"filter", "scrub", "dedup[disk]"}
GROWTH_TOLERANCE = 0.2  # time within data ratio x (1 +- 20%)
FLAT_MEMORY = 1.25  # peak RSS grows by at most this factor


# --- the child: one stage ----------------------------------------------------------------------------


def stage_spec(name: str) -> Any:
    """The stage's StageSpec, built here rather than from flows.stages (which imports every stage,
    torch included, and would inflate the measured memory)."""
    from tasks.common.stage import StageSpec

    if name == "collect":
        from tasks import collect

        return StageSpec("collect", collect.collect, (), collect.STAGE_VERSION)
    if name == "filter":
        from tasks import filter as filter_

        return StageSpec(
            "filter", filter_.filter_documents, ("collect",), filter_.STAGE_VERSION, sharded=True
        )
    if name == "dedup":
        from tasks import dedup

        return StageSpec("dedup", dedup.dedup, ("filter",), dedup.STAGE_VERSION, sharded=True)
    from tasks.scrub import stage as scrub

    return StageSpec("scrub", scrub.scrub, ("dedup",), scrub.STAGE_VERSION, sharded=True)


def stage_config(name: str, options: dict[str, Any]) -> Any:
    from conf.collect import CollectConfig
    from conf.dedup import DedupConfig
    from conf.filter import FilterConfig
    from conf.scrub import ScrubConfig

    kinds = {"collect": CollectConfig, "filter": FilterConfig, "dedup": DedupConfig, "scrub": ScrubConfig}
    return kinds[name](**options)


def run_child(args: argparse.Namespace) -> int:
    """`--run-stage NAME`: run one stage into `--root`, print its seconds and folder as JSON."""
    from tasks.common.artifacts import read_manifest
    from tasks.common.stage import run_stage

    spec = stage_spec(args.run_stage)
    cfg = SimpleNamespace(**{args.run_stage: stage_config(args.run_stage, json.loads(args.options))})
    inputs = {k: read_manifest(Path(v)) for k, v in json.loads(args.inputs).items()}
    started = time.perf_counter()
    result = run_stage(spec, cfg, inputs, Path(args.root))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "path": result.manifest.path, "counts": result.manifest.counts}))
    return 0


# --- the parent: sizes, stages, table ----------------------------------------------------------------


def run_stage_process(
    name: str, root: Path, inputs: dict[str, str], options: dict[str, Any]
) -> tuple[dict[str, Any], float, float]:
    """Run one stage in a child process; its result, the peak RSS (MB) of the child and its workers, and
    their CPU seconds (sampled, so the last 50 ms of each process are missed; imports are included)."""
    cmd = [sys.executable, "-m", "bench.bench_scale", "--run-stage", name, "--root", str(root),
           "--inputs", json.dumps(inputs), "--options", json.dumps(options)]  # fmt: skip
    env = {**os.environ, "LMFORGE_PROGRESS": "0"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    cpu: dict[int, float] = {}
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            rss = 0
            for p in tree:
                with p.oneshot():
                    rss += p.memory_info().rss
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"stage {name} failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1]), peak / 2**20, sum(cpu.values())


def folder_bytes(path: str) -> int:
    return sum(p.stat().st_size for p in (Path(path) / "documents").glob("shard-*"))


def run_size(n_docs: int, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The data flow on `n_docs` generated documents; one row per stage (and dedup method)."""
    corpus = work / f"web-{n_docs}.jsonl"
    t = time.perf_counter()
    corpus_bytes = WebCorpus(n_docs, seed=args.seed).write(corpus)
    print(f"corpus: {n_docs} docs, {corpus_bytes / 1e6:.1f} MB in {time.perf_counter() - t:.0f}s", flush=True)
    root = work / f"artifacts-{n_docs}"
    w = args.workers
    collect_opts = {"sources": [{"kind": "files", "paths": [str(corpus)]}], "shard_docs": args.shard_docs}
    steps: list[tuple[str, str, dict[str, Any], str]] = [
        ("collect", "collect", collect_opts, ""),
        ("filter", "filter", {"workers": w, "max_dropped_share": 1.0}, "collect"),
    ]
    steps += [
        (f"dedup[{m}]", "dedup", {"workers": w, "method": m, "max_memory_mb": args.max_memory_mb}, "filter")
        for m in args.dedup_methods
    ]
    steps.append(("scrub", "scrub", {"workers": w, "max_pii_left": 10**9}, "dedup"))
    folders: dict[str, str] = {}
    rows = []
    for label, stage, options, upstream in steps:
        inputs = {upstream: folders[upstream]} if upstream else {}
        in_bytes = corpus_bytes if stage == "collect" else folder_bytes(folders[upstream])
        options = valid_options(stage, options)
        result, peak_mb, cpu_s = run_stage_process(stage, root / label, inputs, options)  # never a cache hit
        folders[stage] = result["path"]
        seconds = result["seconds"]
        rows.append({
            "bench": f"scale/{label}/{n_docs}", "stage": label, "docs": n_docs,
            "docs_in": result["counts"].get("documents_in", result["counts"].get("documents")),
            "mb_in": round(in_bytes / 1e6, 1), "seconds": round(seconds, 2),
            "mb_per_s": round(in_bytes / 1e6 / seconds, 2), "peak_rss_mb": round(peak_mb, 1),
            "cpu_s": round(cpu_s, 1), "mb_per_cpu_s": round(in_bytes / 1e6 / max(cpu_s, 1e-9), 2),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def valid_options(stage: str, options: dict[str, Any]) -> dict[str, Any]:
    """Drop options this checkout's config does not have (e.g. a scrub gate renamed meanwhile)."""
    from conf.collect import CollectConfig
    from conf.dedup import DedupConfig
    from conf.filter import FilterConfig
    from conf.scrub import ScrubConfig

    kinds = {"collect": CollectConfig, "filter": FilterConfig, "dedup": DedupConfig, "scrub": ScrubConfig}
    return {k: v for k, v in options.items() if k in kinds[stage].model_fields}


def growth(rows: list[dict[str, Any]], small: int, large: int) -> list[dict[str, Any]]:
    """Large / small per stage: time and memory ratios against the data ratio, and whether on target."""
    by = {(r["stage"], r["docs"]): r for r in rows}
    data_ratio = large / small
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        a, b = by.get((stage, small)), by.get((stage, large))
        if not a or not b:
            continue
        time_ratio = b["seconds"] / a["seconds"]
        cpu_ratio = b["cpu_s"] / a["cpu_s"] if a["cpu_s"] else float("nan")
        mem_ratio = b["peak_rss_mb"] / a["peak_rss_mb"]
        linear = abs(time_ratio / data_ratio - 1) <= GROWTH_TOLERANCE
        flat = mem_ratio <= FLAT_MEMORY
        out.append({
            "bench": f"scale/{stage}/growth", "stage": stage, "data_ratio": round(data_ratio, 2),
            "time_ratio": round(time_ratio, 2), "cpu_ratio": round(cpu_ratio, 2),
            "rss_ratio": round(mem_ratio, 2),
            "time_linear": linear, "rss_flat": flat if stage in BOUNDED else "n/a (grows by design)",
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> Path | int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", default="50000,200000", help="the two corpus sizes (documents)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply both sizes (e.g. 0.1 for a quick run)"
    )
    parser.add_argument("--workers", type=int, default=2, help="filter/dedup/scrub worker processes")
    parser.add_argument("--dedup-methods", default="disk,memory", help="dedup methods to run, in order")
    parser.add_argument("--max-memory-mb", type=int, default=1024, help="dedup.max_memory_mb")
    parser.add_argument("--shard-docs", type=int, default=5000, help="collect.shard_docs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    parser.add_argument("--run-stage", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_stage:
        return run_child(args)
    args.dedup_methods = [m.strip() for m in args.dedup_methods.split(",") if m.strip()]
    small, large = (max(100, round(int(x) * args.scale)) for x in args.docs.split(","))
    work = args.keep or Path(tempfile.mkdtemp(prefix="lmforge-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = run_size(small, work, args) + run_size(large, work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    details = {"command": " ".join(["python -m bench.bench_scale", *(argv or sys.argv[1:])]),
               "load_average": os.getloadavg(), "sizes": [small, large]}  # fmt: skip
    return save("scale", rows + growth(rows, small, large), details)


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
