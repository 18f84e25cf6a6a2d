"""Engine bench: wall time of the sharded data stages (filter, dedup, scrub) in-process and on Dask.

On the same input, each variant runs the real pipeline (`flows.lifecycle.lifecycle`, targets `scrub`)
into its own fresh artifacts root, with the collect stage shared (its finished folder is linked in, so
it comes back "cached"):

    (a) local                  execution.engine=local, the stages' default workers (1)
    (b) local, 2 procs         execution.engine=local, dedup.workers=2, pii.workers=2 (their own pools)
    (c) dask, new cluster      execution.engine=dask: the pipeline starts (and closes) a 2-worker
                               LocalCluster; one Prefect task run per shard
    (d) dask, running cluster  execution.dask_address of a 2-worker LocalCluster started once and
                               warmed by one untimed run: the per-stage costs without the cold start

Every variant must write byte-identical stage folders (same content hash for collect, filter, dedup
and scrub); the bench fails loudly otherwise. Stage seconds are the stages' own (`run.results[..]
.seconds`, measured inside the stage task); "pipeline wall" is the whole `lifecycle` call, which for
(c) also holds starting and closing the LocalCluster. CPU seconds are sampled per process (this one,
Prefect's temporary server, worker processes). Measured apart: a LocalCluster's start and close, a
sub-flow of one no-op shard task (the fixed cost of a stage on Dask) and each further shard task, the
import a new worker pays on its first shard, and how much parallel throughput the machine really gives
two busy processes (a shared VM may give less than its CPU count says), at the start and the end.

Two corpora: the `tiny` preset's pydocs corpus (~1.7k docstrings, `collect.shard_docs=500`), and a
larger synthetic one (`--synthetic-docs`, 20k) whose documents are 2-4 pydocs docstrings joined,
written as a jsonl under the temporary folder and read by a `files` source: real text (the filters
keep it, few duplicates), enough of it that the numbers say something beyond start-up costs.

A warm-up run (local engine) into the pydocs collect root comes first, so this process's first imports
(datasketch, the PII detectors) are not charged to (a); it is also the reference every variant's
content hashes are checked against. Variants rotate order between repeats. Prefect (PREFECT_HOME, its
temporary server's database) and MLflow (one SQLite store) live in a temporary folder; the artifacts
are deleted at the end unless --keep. Default: ~4-5 minutes on 2 cores.

    python -m bench.bench_engine [--synthetic-docs 20000] [--repeats 2] [--corpora pydocs,synthetic]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import save

SHARDED = ["filter", "dedup", "scrub"]
STAGES = ["collect", *SHARDED]
LEGEND = """
filter_s/dedup_s/scrub_s: the stages' own seconds (median over the repeats); seconds: their sum;
docs_per_s: collected documents / seconds; speedup: vs (a). pipeline_wall_s: the whole `lifecycle`
call (collect cached), which for (c) holds starting and closing the cluster. cpu_s: CPU seconds of this
process / Prefect's temporary server / worker processes (Dask workers or the stages' pools) during
the run; cores_busy: their sum / pipeline_wall_s; peak_rss_mb: of those processes together (the idle
running cluster counts only in (d)). All variants wrote identical stage folders (checked).
The CPU row: how much more work 2 busy processes get done than 1 on this machine (2.0 = two real cores).
"""


PROCESS_KINDS = ("main", "server", "workers")  # whose CPU seconds a row reports
ISOLATED_ENV = (
    "DASK_LOGGING__DISTRIBUTED",
    "PREFECT_HOME",
    "PREFECT_LOGGING_LEVEL",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "PREFECT_API_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK",
)


def _isolate(home: Path) -> dict[str, str | None]:
    """Prefect's home (and its temporary server's database) and logging: bench-only. Returns the old
    values."""
    saved = {k: os.environ.get(k) for k in ISOLATED_ENV}
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "warning"  # the scheduler's and the workers' INFO lines
    logging.getLogger("distributed").setLevel(logging.WARNING)  # if distributed was imported already
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("PREFECT_API_URL", None)  # never report bench runs to the user's server
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the config names the bench's own store
    os.environ["MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK"] = "true"
    return saved


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _synthetic_corpus(collect_dir: Path, n_docs: int, dest: Path, seed: int = 0) -> Path:
    """`n_docs` documents, each 2-4 random docstrings of the pydocs corpus joined by blank lines."""
    texts = [
        json.loads(line)["text"]
        for p in sorted((collect_dir / "documents").glob("shard-*.jsonl"))
        for line in p.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    rng = random.Random(seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", encoding="utf-8") as fh:
        for i in range(n_docs):
            text = "\n\n".join(rng.sample(texts, rng.randint(2, 4)))
            fh.write(json.dumps({"id": f"synth-{i:06d}", "text": text}, ensure_ascii=False) + "\n")
    return dest


def _import_seconds(module: str) -> float:
    """Wall seconds of `python -c "import <module>"` in a new process (what a new Dask worker pays for it)."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", f"import {module}"], cwd=Path(__file__).resolve().parents[1], check=True
    )
    return time.perf_counter() - t0


def _spin(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t0


def _parallel_throughput(workers: int, n: int = 25_000_000) -> float:
    """How many times the work of one busy Python process `workers` of them get done in the same wall
    time (ideally `workers`). A shared or throttled VM can give less than its CPU count suggests."""
    import multiprocessing

    one = _spin(n)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(abs, range(workers))  # the processes are up before timing
        t0 = time.perf_counter()
        pool.map(_spin, [n] * workers, chunksize=1)
        wall = time.perf_counter() - t0
    return workers * one / wall


class ProcessUsage:
    """CPU seconds and peak RSS (summed) of this process and its children while inside, sampled (so
    processes that come and go count too), leaving out the processes `exclude` (an idle cluster that
    the run does not use). CPU is grouped: main (this process), server (Prefect's temporary API server),
    workers (Dask workers, the stages' process pools)."""

    def __init__(self, exclude: frozenset[int] = frozenset(), interval: float = 0.05):
        self.exclude = exclude
        self.interval = interval
        self.start: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.group: dict[int, str] = {}
        self.peak_rss = 0
        self._stop = threading.Event()

    def _sample(self, into: dict[int, float]) -> None:
        me = psutil.Process()
        try:
            procs = [me, *(c for c in me.children(recursive=True) if c.pid not in self.exclude)]
        except psutil.Error:
            procs = [me]
        rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    t, rss = proc.cpu_times(), rss + proc.memory_info().rss
                if proc.pid not in self.group:
                    cmd = " ".join(proc.cmdline())
                    server = "uvicorn" in cmd or "--lifespan" in cmd
                    self.group[proc.pid] = "main" if proc.pid == me.pid else "server" if server else "workers"
                into[proc.pid] = t.user + t.system
            except psutil.Error:
                pass
        self.peak_rss = max(self.peak_rss, rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(self.last)

    def __enter__(self) -> ProcessUsage:
        self._sample(self.start)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(self.last)

    def cpu_seconds(self) -> dict[str, float]:
        out = {"main": 0.0, "server": 0.0, "workers": 0.0}
        for pid, t in self.last.items():
            out[self.group[pid]] += max(0.0, t - self.start.get(pid, 0.0))
        return out


def _start_cluster(workers: int) -> tuple[Any, float]:
    """The pipeline's own LocalCluster (flows/engine.py: ShardCluster, reporting to this process's
    Prefect API), started now; and its start seconds."""
    import distributed  # noqa: F401  (imports outside the timing, as in a long-running process)
    import prefect_dask  # noqa: F401

    from conf.execution import ExecutionConfig
    from flows.engine import ShardCluster

    cluster = ShardCluster(ExecutionConfig(engine="dask", dask_workers=workers, dask_threads_per_worker=1))
    t0 = time.perf_counter()
    cluster.address()
    return cluster, time.perf_counter() - t0


def _map_overhead(address: str, n_tasks: int, repeats: int = 3) -> float:
    """Median seconds of one `<stage>-shards` sub-flow mapping a no-op (`len`) over `n_tasks` task runs."""
    from flows.engine import DaskShardMap

    mapper = DaskShardMap("noop", address)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mapper(len, [[]] * n_tasks)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _run(
    base_overrides: list[str],
    variant: list[str],
    root: Path,
    collect_root: Path,
    exclude: frozenset[int] = frozenset(),
) -> tuple[Any, float, float]:
    """One pipeline run up to scrub into a fresh `root`, the collect folder linked from `collect_root`;
    the processes `exclude` are left out of its CPU and memory figures."""
    from conf.loader import load_config
    from flows.lifecycle import lifecycle

    root.mkdir(parents=True)
    (root / "collect").symlink_to(collect_root / "collect", target_is_directory=True)
    cfg = load_config("tiny", overrides=[*base_overrides, f"artifacts_root={root}", *variant])
    with ProcessUsage(exclude) as usage:
        t0 = time.perf_counter()
        run = lifecycle(cfg, ["scrub"])
        wall = time.perf_counter() - t0
    run.cpu = usage.cpu_seconds()  # type: ignore[attr-defined]
    statuses = {s: run.results[s].status for s in STAGES}
    if statuses != {"collect": "cached", **{s: "ran" for s in SHARDED}}:
        raise RuntimeError(f"{root}: expected collect cached and the sharded stages run, got {statuses}")
    return run, wall, usage.peak_rss / 2**20


def _hashes(run: Any) -> dict[str, str]:
    return {name: run.results[name].manifest.content_hash for name in STAGES}


def collect(label: str, base_overrides: list[str], work: Path, warm_up: bool) -> tuple[Path, Any]:
    """Run collect once into `<work>/<label>-collect` (shared by the variants); with `warm_up`, the sharded
    stages too (in-process), so the first timed variant does not pay this process's first imports."""
    from conf.loader import load_config
    from flows.lifecycle import lifecycle

    root = work / f"{label}-collect"
    cfg = load_config("tiny", overrides=[*base_overrides, f"artifacts_root={root}", "execution.engine=local"])
    t0 = time.perf_counter()
    run = lifecycle(cfg, ["scrub"] if warm_up else ["collect"])
    print(
        f"[{label}] collect{' + warm-up' if warm_up else ''}: {time.perf_counter() - t0:.1f}s, "
        f"{run.results['collect'].manifest.counts.get('documents')} documents",
        flush=True,
    )
    return root, run


def bench_corpus(
    label: str,
    base_overrides: list[str],
    work: Path,
    variants: dict[str, list[str]],
    repeats: int,
    collected: tuple[Path, Any],
    idle: frozenset[int] = frozenset(),
) -> tuple[list[dict], dict]:
    """Every variant on one corpus: rows for the table, and details (content hashes, every timing).

    `collected`: the root holding the corpus's collect folder, and the run that made it; when that run
    also ran the sharded stages (the warm-up), its hashes are the reference, else those of (a)'s first run.
    `idle`: the running cluster's processes, left out of the figures of the variants that do not use it.
    """
    ref_root, ref = collected
    reference = _hashes(ref) if set(STAGES) <= set(ref.results) else None
    docs_in = ref.results["collect"].manifest.counts["documents"]
    shards = len(ref.results["collect"].manifest.files_under("documents/"))

    timings: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    hashes: dict[str, dict[str, str]] = {}
    order = list(variants)
    for rep in range(repeats):
        for name in order[rep % len(order) :] + order[: rep % len(order)]:  # rotate: no variant always first
            root = work / f"{label}-{re.sub(r'[^a-z0-9]+', '-', name)}-{rep}"
            uses_cluster = any(o.startswith("execution.dask_address=") for o in variants[name])
            run, wall, peak = _run(
                base_overrides, variants[name], root, ref_root, frozenset() if uses_cluster else idle
            )
            hashes[f"{name} #{rep}"] = _hashes(run)
            t = {s: run.results[s].seconds for s in SHARDED}
            t.update(
                total=sum(t.values()),
                wall=wall,
                peak_rss_mb=peak,
                **{f"cpu_{k}": v for k, v in run.cpu.items()},
            )
            timings[name].append(t)
            print(f"[{label}] {name} #{rep}: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()), flush=True)
            shutil.rmtree(root, ignore_errors=True)
    reference = reference or hashes[f"{order[0]} #0"]
    mismatches = [
        f"[{label}] {who}: {stage} content hash {got[stage]} != {reference[stage]}"
        for who, got in hashes.items()
        for stage in STAGES
        if got[stage] != reference[stage]
    ]
    if mismatches:
        raise RuntimeError("the engines wrote different stage folders:\n  " + "\n  ".join(mismatches))

    def med(name: str, key: str) -> float:
        return statistics.median(t[key] for t in timings[name])

    base_total = med(order[0], "total")
    rows = []
    for name in variants:
        total = med(name, "total")
        rows.append({
            "bench": f"engine/{label}: {name}",
            **{f"{s}_s": round(med(name, s), 2) for s in SHARDED},
            "seconds": round(total, 2),
            "docs_per_s": round(docs_in / total),
            "speedup": round(base_total / total, 2),
            "pipeline_wall_s": round(med(name, "wall"), 2),
            "cpu_s main/server/workers": "/".join(f"{med(name, f'cpu_{k}'):.1f}" for k in PROCESS_KINDS),
            "cores_busy": round(sum(med(name, f"cpu_{k}") for k in PROCESS_KINDS) / med(name, "wall"), 2),
            "peak_rss_mb": round(med(name, "peak_rss_mb")),
        })  # fmt: skip
    details = {
        "documents": docs_in,
        "shards": shards,
        "overrides": base_overrides,
        "content_hashes": reference,
        "runs": timings,
        "repeats": repeats,
    }
    return rows, details


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default="pydocs,synthetic", help="comma-separated, of: pydocs, synthetic")
    ap.add_argument("--shard-docs", type=int, default=500, help="collect.shard_docs for the pydocs corpus")
    ap.add_argument("--synthetic-docs", type=int, default=20_000)
    ap.add_argument("--synthetic-shard-docs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2, help="dedup/pii workers (b) and Dask workers (c, d)")
    ap.add_argument(
        "--repeats", type=int, default=2, help="runs of each variant per corpus (median reported)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the artifacts (printed folder)")
    args = ap.parse_args(argv)
    corpora = [c.strip() for c in args.corpora.split(",") if c.strip()]
    if not corpora or set(corpora) - {"pydocs", "synthetic"}:
        ap.error(f"--corpora: pydocs and/or synthetic, not {args.corpora!r}")

    # the stores (Prefect's database, MLflow's SQLite) stay: a temporary Prefect server started by this
    # process keeps using its database after the bench; the artifacts (`work`) go unless --keep
    stores = Path(tempfile.mkdtemp(prefix="lmforge-bench-engine-stores-"))
    work = Path(tempfile.mkdtemp(prefix="lmforge-bench-engine-"))
    saved_env = _isolate(stores)
    common = [
        f"tracking.tracking_uri=sqlite:///{stores / 'mlflow.db'}",
        "tracking.experiment=lmforge-bench-engine",
    ]
    w = args.workers
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {
        "load_1m_at_start": round(os.getloadavg()[0], 2),
        "stores": str(stores),
        "work": str(work) if args.keep else None,
        "workers": w,
    }
    t_all = time.perf_counter()
    cluster = None
    try:
        capacity = [_parallel_throughput(w)]
        print(f"CPU: {w} busy processes do x{capacity[0]:.2f} the work of 1", flush=True)
        pydocs = [*common, f"collect.shard_docs={args.shard_docs}"]
        pydocs_collected = collect("pydocs", pydocs, work, warm_up=True)  # also warms this process up
        pydocs_root = pydocs_collected[0]

        # (d): a cluster that is already running (execution.dask_address), its workers warmed by one
        # untimed run, to tell the cold cluster's start-up costs from the per-stage, per-shard ones
        before = {c.pid for c in psutil.Process().children(recursive=True)}
        cluster, start_s = _start_cluster(w)
        address = cluster.address()
        idle = frozenset(c.pid for c in psutil.Process().children(recursive=True)) - before
        first_noop = _map_overhead(address, 1, repeats=1)  # the workers' first Prefect task run: cold
        dask_warm = ["execution.engine=dask", f"execution.dask_address={address}"]
        t0 = time.perf_counter()
        warm_run, _, _ = _run(pydocs, dask_warm, work / "pydocs-cluster-warm-up", pydocs_root)
        if _hashes(warm_run) != _hashes(pydocs_collected[1]):
            raise RuntimeError(
                f"pydocs on the cluster wrote different stage folders: {_hashes(warm_run)} "
                f"!= in-process {_hashes(pydocs_collected[1])}"
            )
        warm_up_s = time.perf_counter() - t0
        variants = {
            "(a) local": ["execution.engine=local"],
            f"(b) local, {w} procs": ["execution.engine=local", f"dedup.workers={w}", f"pii.workers={w}"],
            f"(c) dask, new {w}-worker cluster": [
                "execution.engine=dask",
                f"execution.dask_workers={w}",
                "execution.dask_threads_per_worker=1",
            ],
            f"(d) dask, running {w}-worker cluster": dask_warm,
        }
        for label in corpora:
            if label == "pydocs":
                r, d = bench_corpus("pydocs", pydocs, work, variants, args.repeats, pydocs_collected, idle)
            else:
                collect_dir = next(
                    p for p in (pydocs_root / "collect").iterdir() if (p / "manifest.json").exists()
                )
                corpus = _synthetic_corpus(
                    collect_dir, args.synthetic_docs, work / "synthetic" / "corpus.jsonl"
                )
                sources = json.dumps([{"kind": "files", "name": "synthetic", "paths": [str(corpus)]}])
                synth = [
                    *common,
                    f"collect.sources={sources}",
                    f"collect.shard_docs={args.synthetic_shard_docs}",
                ]
                r, d = bench_corpus(
                    "synthetic",
                    synth,
                    work,
                    variants,
                    args.repeats,
                    collect("synthetic", synth, work, warm_up=False),
                    idle,
                )
                d["corpus_mb"] = round(corpus.stat().st_size / 1e6, 1)
            rows += r
            details[label] = d

        capacity.append(_parallel_throughput(w))
        print(f"CPU: {w} busy processes do x{capacity[1]:.2f} the work of 1", flush=True)
        # fixed and per-task costs of a stage on a running cluster: one sub-flow of 1 vs 21 no-op task runs
        one, many = _map_overhead(address, 1), _map_overhead(address, 21)
        per_task = (many - one) / 20
        imports = {m: _import_seconds(m) for m in ("flows.engine", "flows.runner")}
        t0 = time.perf_counter()
        cluster.close()
        close_s, cluster = time.perf_counter() - t0, None
        rows += [
            {"bench": f"engine/LocalCluster({w} workers) start", "seconds": round(start_s, 2)},
            {"bench": f"engine/LocalCluster({w} workers) close", "seconds": round(close_s, 2)},
            {"bench": "engine/sub-flow of 1 no-op shard, new cluster (first task runs)",
             "seconds": round(first_noop, 2)},
            {"bench": "engine/sub-flow of 1 no-op shard, running cluster (per stage)",
             "seconds": round(one, 2)},
            {"bench": "engine/each further no-op shard task run", "seconds": round(per_task, 3)},
            {"bench": "engine/first pydocs run on the new cluster (untimed in (d))",
             "seconds": round(warm_up_s, 2)},
            {"bench": "engine/import flows.engine, new process (a worker's first no-op shard)",
             "seconds": round(imports["flows.engine"], 2)},
            {"bench": "engine/import flows.runner, new process (what a worker's first shard cost while the "
                      "stage task's context travelled with it)",
             "seconds": round(imports["flows.runner"], 2)},
            {"bench": f"engine/CPU: {w} busy processes' throughput vs 1 (start, end)", "seconds": "",
             "speedup": f"{capacity[0]:.2f}, {capacity[1]:.2f}"},
        ]  # fmt: skip
        details.update(
            cluster_start_s=start_s,
            cluster_close_s=close_s,
            cluster_warm_up_run_s=warm_up_s,
            first_subflow_1_task_s=first_noop,
            subflow_1_task_s=one,
            subflow_21_tasks_s=many,
            per_task_s=per_task,
            parallel_throughput=capacity,
            import_s=imports,
        )
    finally:
        if cluster is not None:
            cluster.close()
        details["bench_seconds"] = round(time.perf_counter() - t_all, 1)
        _restore(saved_env)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"bench took {details['bench_seconds']}s" + (f"; artifacts kept in {work}" if args.keep else ""))
    path = save("engine", rows, details)
    with open(path.with_suffix(".md"), "a", encoding="utf-8") as fh:
        fh.write(LEGEND)
    return path


if __name__ == "__main__":
    main()
