"""Content-addressed stage folders and their manifests.

A stage writes into `<root>/<stage>/<hash12>/`. The hash covers the stage name, its `STAGE_VERSION`,
the result-affecting config and the content hashes of its input manifests, so the same inputs and
config always land in the same folder. `manifest.json` is written last and atomically: a folder
without one is an unfinished stage (a crash, a kill) and is never read as a result.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
HASH_LEN = 12


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace: the byte form that hashes are taken over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: Iterable[str]) -> dict[str, str]:
    """path as given -> sha256 of each existing regular file (others are left out).

    Input fingerprints: a config names a file, the runner keys the stage hash on its content.
    """
    return {p: sha256_file(Path(p).expanduser()) for p in paths if Path(p).expanduser().is_file()}


def sha256_tree(folder: Path, skip: tuple[str, ...] = ("__pycache__",)) -> dict[str, str]:
    """relative POSIX path -> sha256 of every file under `folder`, in path order (`skip`: folder names)."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not set(skip) & set(p.parts)
    }


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    size: int
    sha256: str


class Manifest(BaseModel):
    """What a finished stage produced: its files (with sizes and sha256), counts and metrics."""

    model_config = ConfigDict(frozen=True)

    stage: str
    stage_hash: str
    stage_version: int
    path: str
    config: dict[str, Any]
    inputs: dict[str, str] = Field(default_factory=dict, description="upstream stage -> content hash")
    files: dict[str, FileEntry] = Field(default_factory=dict, description="relative path -> entry")
    counts: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict, description="stage-specific facts (paths, names)")
    mlflow_run_id: str | None = None
    seconds: float = 0.0
    created_at: float = Field(default_factory=time.time)

    @property
    def dir(self) -> Path:
        return Path(self.path)

    @property
    def content_hash(self) -> str:
        """Hash of what the stage produced: downstream stages key their caches on this."""
        files = {name: entry.sha256 for name, entry in self.files.items()}
        return sha256_text(canonical_json({"stage_hash": self.stage_hash, "files": files}))[:HASH_LEN]

    def file(self, name: str) -> Path:
        """Absolute path of one output file, checked against the manifest's listing."""
        if name not in self.files:
            listed = ", ".join(sorted(self.files)) or "none"
            raise FileNotFoundError(
                f"stage {self.stage} ({self.path}) has no output {name!r}; it has: {listed}"
            )
        return self.dir / name

    def files_under(self, prefix: str) -> list[Path]:
        return [self.dir / n for n in sorted(self.files) if n.startswith(prefix)]


def stage_hash(stage: str, version: int, config: dict[str, Any], inputs: dict[str, Manifest]) -> str:
    """The 12-hex-digit address of a stage's output folder."""
    payload = {
        "stage": stage,
        "version": version,
        "config": config,
        "inputs": {name: m.content_hash for name, m in sorted(inputs.items())},
    }
    return sha256_text(canonical_json(payload))[:HASH_LEN]


def stage_dir(root: Path, stage: str, hash12: str) -> Path:
    return Path(root) / stage / hash12


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename, so readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_outputs(folder: Path) -> dict[str, FileEntry]:
    """Every regular file under `folder` except the manifest and temp files, with size and sha256."""
    entries: dict[str, FileEntry] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name == MANIFEST_NAME or p.name.endswith(".tmp"):
            continue
        rel = p.relative_to(folder).as_posix()
        entries[rel] = FileEntry(size=p.stat().st_size, sha256=sha256_file(p))
    return entries


def write_manifest(manifest: Manifest) -> Manifest:
    """Fill in the file listing and write `manifest.json` atomically. Call last."""
    folder = manifest.dir
    manifest = manifest.model_copy(update={"files": list_outputs(folder)})
    atomic_write_text(folder / MANIFEST_NAME, manifest.model_dump_json(indent=2))
    return manifest


def read_manifest(folder: Path) -> Manifest | None:
    """The finished stage's manifest, or None when the folder is missing or unfinished."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RuntimeError(f"{path} is corrupt ({e}); delete the folder {folder} to re-run the stage") from e


def verify_manifest(manifest: Manifest) -> list[str]:
    """Problems found comparing the manifest with the files on disk (empty list: all good)."""
    problems = []
    for name, entry in manifest.files.items():
        p = manifest.dir / name
        if not p.exists():
            problems.append(f"missing {name}")
        elif p.stat().st_size != entry.size:
            problems.append(f"size of {name} changed ({p.stat().st_size} != {entry.size})")
    return problems
