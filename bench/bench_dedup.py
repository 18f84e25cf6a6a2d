"""Benchmark: lmforge's near-dedup (tasks.dedup.core) against datasketch used the straightforward way.

Baseline: one `MinHash()` per document, `update()` per shingle (default SHA-1 hash), `MinHashLSH.insert`
for every document, then `query` for every document, union-find over the results.
lmforge: `find_duplicates` with its defaults: exact groups first; xxhash signatures computed a batch
of documents per numpy step (identical to datasketch's MinHash of the same hashes), in 1 or 2 worker
processes; one `MinHashLSH` insertion session; candidate pairs read from the LSH buckets and verified
by estimated Jaccard. Both use the same shingles, num_perm and threshold; lmforge asks datasketch's
optimizer for bands x rows with weights (0.2, 0.8) (recall first: verification removes the extra false
candidates). "verify off" rows show what verification buys.

The corpus is synthetic: random-word documents (Zipf-like words, 80-400 words), some with planted near
copies (a few words replaced: true Jaccard mostly 0.75-1) and "related" copies (many words replaced:
Jaccard < 0.6, not duplicates). Ground truth: every pair within a family (a document and its copies)
whose exact Jaccard of shingle sets reaches the threshold. Precision/recall are over the pairs that end
up in one cluster. Several corpora (seeds) are summed, so recall differences are not chance.

    .venv/bin/python bench/bench_dedup.py [--docs 3000] [--seeds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import save  # noqa: E402
from tasks.dedup.core import Params, UnionFind, find_duplicates, normalize, shingles  # noqa: E402


def make_corpus(n_docs: int, seed: int) -> tuple[list[str], list[int]]:
    """Texts and their family ids (a base document and its near / related copies share one)."""
    rng = random.Random(seed)
    vocab = [f"{w}{i}" for i, w in enumerate(rng.choices("abcdefghijklmnopqrstuvwxyz", k=20_000))]
    weights = [1 / (i + 10) for i in range(len(vocab))]  # Zipf-like word frequencies
    texts, family = [], []

    def copy(words: list[str], rate: float) -> str:
        out = list(words)
        for _ in range(max(1, round(rate * len(out)))):
            out[rng.randrange(len(out))] = rng.choice(vocab)
        return " ".join(out)

    base = 0
    while len(texts) < n_docs:
        words = rng.choices(vocab, weights, k=rng.randint(80, 400))
        texts.append(" ".join(words))
        family.append(base)
        roll = rng.random()
        for _ in range(rng.randint(1, 3) if roll < 0.25 else 0):  # near copies
            texts.append(copy(words, rng.uniform(0.002, 0.03)))
            family.append(base)
        if 0.25 <= roll < 0.35:  # a related, not duplicate, copy
            texts.append(copy(words, rng.uniform(0.1, 0.3)))
            family.append(base)
        base += 1
    return texts[:n_docs], family[:n_docs]


def true_pairs(
    sets: list[set[bytes]], family: list[int], threshold: float
) -> tuple[set[tuple[int, int]], int]:
    """Pairs (i < j) within a family whose exact Jaccard reaches the threshold; and all within-family
    pairs."""
    by_family: dict[int, list[int]] = {}
    for i, f in enumerate(family):
        by_family.setdefault(f, []).append(i)
    pairs, within = set(), 0
    for members in by_family.values():
        for i, j in itertools.combinations(members, 2):
            within += 1
            a, b = sets[i], sets[j]
            if a and b and len(a & b) / len(a | b) >= threshold:
                pairs.add((i, j))
    return pairs, within


def cluster_pairs(roots: list[int]) -> set[tuple[int, int]]:
    clusters: dict[int, list[int]] = {}
    for i, r in enumerate(roots):
        clusters.setdefault(r, []).append(i)
    return {
        p for members in clusters.values() if len(members) > 1 for p in itertools.combinations(members, 2)
    }


def baseline(texts: list[str], num_perm: int, threshold: float, ngram: int) -> list[int]:
    from datasketch import MinHash, MinHashLSH

    minhashes = []
    for text in texts:
        m = MinHash(num_perm=num_perm)
        for s in shingles(normalize(text), ngram):
            m.update(s)
        minhashes.append(m)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, m in enumerate(minhashes):
        lsh.insert(i, m)
    uf = UnionFind(len(texts))
    for i, m in enumerate(minhashes):
        for j in lsh.query(m):
            uf.union(i, j)
    return [uf.find(i) for i in range(len(texts))]


def ours(
    texts: list[str], num_perm: int, threshold: float, ngram: int, workers: int, verify: bool
) -> list[int]:
    p = Params(ngram=ngram, num_perm=num_perm, threshold=threshold, workers=workers, verify=verify)
    res = find_duplicates(enumerate(texts), p)
    roots = list(range(len(texts)))
    for d in res.duplicates:
        roots[d.index] = d.keeper
    return roots


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", type=int, default=0, help="first corpus seed")
    ap.add_argument("--seeds", type=int, default=3, help="corpora to run (seed, seed+1, ...)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dedup.json")
    args = ap.parse_args(argv)
    load = round(os.getloadavg()[0], 2)  # other work on the machine slows every row alike

    methods = {
        "datasketch, straightforward": lambda texts: baseline(
            texts, args.num_perm, args.threshold, args.ngram
        )
    }
    for w in sorted({1, args.workers}):
        for verify in (True, False):
            name = f"lmforge, {w} worker{'s' if w > 1 else ''}" + ("" if verify else ", verify off")
            methods[name] = lambda texts, w=w, v=verify: ours(
                texts, args.num_perm, args.threshold, args.ngram, w, v
            )

    # several corpora (seeds): the recall of LSH at equal bands x rows differs only by chance between
    # methods, so totals over more true pairs tell a real difference from noise
    totals = {name: {"seconds": 0.0, "hit": 0, "predicted": 0} for name in methods}
    n_docs = words = n_truth = within = 0
    for seed in range(args.seed, args.seed + args.seeds):
        texts, family = make_corpus(args.docs, seed)
        sets = [set(shingles(normalize(t), args.ngram)) for t in texts]
        truth, w_pairs = true_pairs(sets, family, args.threshold)
        n_docs, words, n_truth, within = (
            n_docs + len(texts),
            words + sum(len(t.split()) for t in texts),
            n_truth + len(truth),
            within + w_pairs,
        )
        for name, fn in methods.items():
            t = time.perf_counter()
            pred = cluster_pairs(fn(texts))
            totals[name]["seconds"] += time.perf_counter() - t
            totals[name]["hit"] += len(pred & truth)
            totals[name]["predicted"] += len(pred)
    rows = []
    for name, tot in totals.items():
        rows.append(
            {
                "method": name,
                "seconds": round(tot["seconds"], 3),
                "docs_per_s": round(n_docs / tot["seconds"], 1),
                "precision": round(tot["hit"] / tot["predicted"], 4) if tot["predicted"] else 1.0,
                "recall": round(tot["hit"] / n_truth, 4) if n_truth else 1.0,
                "pairs_predicted": tot["predicted"],
            }
        )
    base = rows[0]["docs_per_s"]
    for r in rows:
        r["speedup"] = round(r["docs_per_s"] / base, 2)

    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm)
    fnw = Params().false_negative_weight
    ours_lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm, weights=(1 - fnw, fnw))
    result = {
        "corpus": {
            "documents": n_docs,
            "words": words,
            "within_family_pairs": within,
            "true_pairs": n_truth,
            "seeds": list(range(args.seed, args.seed + args.seeds)),
        },
        "params": {
            "num_perm": args.num_perm,
            "threshold": args.threshold,
            "ngram": args.ngram,
            "baseline_bands_rows": [lsh.b, lsh.r],
            "lmforge_bands_rows": [ours_lsh.b, ours_lsh.r],
            "lmforge_false_negative_weight": fnw,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_1m_at_start": load},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"{n_docs} documents ({words:,} words, {args.seeds} corpora), {n_truth} true near-duplicate pairs; "
        f"num_perm={args.num_perm}, threshold={args.threshold}; "
        f"LSH bands x rows: datasketch default {lsh.b} x {lsh.r}, "
        f"lmforge {ours_lsh.b} x {ours_lsh.r} (false_negative_weight={fnw}, candidates verified)\n"
    )
    print("| method | seconds | docs/s | speedup | precision | recall | pairs predicted |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['seconds']} | {r['docs_per_s']} | {r['speedup']}x | {r['precision']} | "
            f"{r['recall']} | {r['pairs_predicted']} |"
        )
    print(f"\nwrote {args.out}")
    # the table `make bench` gathers into bench/results/SUMMARY.md and logs to MLflow
    save(
        "dedup",
        [
            {
                "bench": f"dedup: {r['method']}",
                "unit": "docs/s",
                "ours": r["docs_per_s"],
                "speedup": r["speedup"],
                "precision": r["precision"],
                "recall": r["recall"],
            }
            for r in rows
        ],
        result,
    )
    return args.out


if __name__ == "__main__":
    main()
