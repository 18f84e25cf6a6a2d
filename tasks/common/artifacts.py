"""Content-addressed stage folders and their manifests.

A stage writes into `<root>/<stage>/<hash12>/`. The hash covers the stage name, its `STAGE_VERSION`,
the result-affecting config and the content hashes of its input manifests, so the same inputs and
config always land in the same folder. `manifest.json` is written last and atomically: a folder
without one is an unfinished stage (a crash, a kill) and is never read as a result.

The manifest is the cache's only source of truth, and it is checked, not trusted: every file's size and
sha256 are compared with the disk before a folder is reused (`verify_manifest`); a stamp beside the
folder (`.<hash12>.verified.json`) remembers which (size, mtime, ctime, inode) was last hashed, so an
untouched file is not re-read on every run, while any write to it (even one keeping its size) is.
A manifest names its folder relative to the artifacts root (`<stage>/<hash12>`): a copied or moved root
is self-contained. Files a stage marks `volatile` (wall-clock timings, absolute paths of this run) are
listed and verified but left out of the content hash, so rebuilding a stage bit-identically keeps every
downstream hash.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import struct
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
HASH_LEN = 12
STAMP_SUFFIX = ".verified.json"


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
    path: str = Field(description="the folder; absolute in memory, `<stage>/<hash12>` in manifest.json")
    config: dict[str, Any]
    inputs: dict[str, str] = Field(default_factory=dict, description="upstream stage -> content hash")
    files: dict[str, FileEntry] = Field(default_factory=dict, description="relative path -> entry")
    volatile: list[str] = Field(
        default_factory=list, description="files of `files` left out of the content hash (timings, paths)"
    )
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
        """Hash of what the stage produced, less volatile files: downstream stages key their caches on it."""
        skip = set(self.volatile)
        files = {name: entry.sha256 for name, entry in self.files.items() if name not in skip}
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


def canonical_safetensors(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys (the tensor bytes stay as they are).

    Some writers (torchao's quantized tensors, through transformers) fill the header's metadata from a
    dict in hash-seed order: the same weights would get another sha256 on every run.
    """
    path = Path(path)
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    for key in ("__metadata__",):
        if isinstance(header.get(key), dict):
            header[key] = dict(sorted(header[key].items()))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data on 8 bytes
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    os.replace(tmp, path)


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
    return {rel: FileEntry(size=size, sha256=sha) for rel, (size, sha) in _hash_outputs(folder).items()}


def _hash_outputs(folder: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (size, sha256) of the outputs, stamping each as verified (its stat before hashing)."""
    entries: dict[str, tuple[int, str]] = {}
    stamp: dict[str, list[Any]] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name == MANIFEST_NAME or p.name.endswith(".tmp"):
            continue
        rel = p.relative_to(folder).as_posix()
        before = _stat_key(p)
        sha = sha256_file(p)
        entries[rel] = (before[0], sha)
        if _stat_key(p) == before:
            stamp[rel] = [*before, sha]
    _write_stamp(folder, stamp)
    return entries


def volatile_files(files: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The files (relative paths) matching any of a stage's volatile patterns (fnmatch), sorted."""
    return sorted(f for f in files if any(fnmatch.fnmatchcase(f, p) for p in patterns))


def write_manifest(manifest: Manifest, volatile: Sequence[str] = ()) -> Manifest:
    """Fill in the file listing and write `manifest.json` atomically. Call last.

    `volatile`: fnmatch patterns of files that record this run rather than its result (left out of the
    content hash). On disk the manifest names its folder relative to the artifacts root.
    """
    folder = manifest.dir
    files = list_outputs(folder)
    marked = sorted({*manifest.volatile, *volatile_files(files, volatile)} & set(files))
    extra = root_relative(manifest.extra, f"{Path(folder).absolute().parent.parent}/")
    manifest = manifest.model_copy(update={"files": files, "volatile": marked, "extra": extra})
    on_disk = manifest.model_copy(update={"path": relative_path(folder)})
    atomic_write_text(folder / MANIFEST_NAME, on_disk.model_dump_json(indent=2))
    return manifest


def root_relative(data: Any, prefix: str) -> Any:
    """`data` with every string naming a path under the artifacts root (`prefix`) made relative to it."""
    if isinstance(data, str):
        return data[len(prefix) :] if data.startswith(prefix) else data
    if isinstance(data, dict):
        return {k: root_relative(v, prefix) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [root_relative(v, prefix) for v in data]
    return data


def relative_path(folder: Path) -> str:
    """`<stage>/<hash12>`: the folder relative to its artifacts root."""
    folder = Path(folder)
    return f"{folder.parent.name}/{folder.name}"


def read_manifest(folder: Path) -> Manifest | None:
    """The finished stage's manifest, or None when the folder is missing or unfinished.

    Its `path` is the folder it was read from (wherever the root now is), not what was written.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RuntimeError(f"{path} is corrupt ({e}); delete the folder {folder} to re-run the stage") from e
    return manifest.model_copy(update={"path": os.path.abspath(folder)})


def verify_manifest(manifest: Manifest) -> list[str]:
    """Problems found comparing the manifest with the files on disk (empty list: all good).

    Sizes always; sha256 for every file whose (size, mtime, ctime, inode) is not the one stamped as
    verified, so a file rewritten in place, even to the same size, is caught.
    """
    folder = manifest.dir
    stamp = _read_stamp(folder)
    fresh: dict[str, list[Any]] = {}
    problems = []
    for name, entry in manifest.files.items():
        p = folder / name
        try:
            key = _stat_key(p)
        except FileNotFoundError:
            problems.append(f"missing {name}")
            continue
        if key[0] != entry.size:
            problems.append(f"size of {name} changed ({key[0]} != {entry.size})")
            continue
        if stamp.get(name) == [*key, entry.sha256]:
            fresh[name] = stamp[name]
            continue
        sha = sha256_file(p)
        if sha != entry.sha256:
            problems.append(f"content of {name} changed (sha256 {sha[:12]} != {entry.sha256[:12]})")
        elif _stat_key(p) == key:
            fresh[name] = [*key, sha]
    if not problems and fresh != stamp:
        _write_stamp(folder, fresh)
    return problems


# ---- the verified-at stamp ------------------------------------------------------------------------------
def stamp_path(folder: Path) -> Path:
    """Beside the stage folder (never inside it: the folder holds only what the stage wrote)."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}{STAMP_SUFFIX}"


def _stat_key(p: Path) -> tuple[int, int, int, int]:
    """What any write, truncation, copy or replacement of a file changes (ctime cannot be set back)."""
    st = p.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _read_stamp(folder: Path) -> dict[str, list[Any]]:
    try:
        data = json.loads(stamp_path(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_stamp(folder: Path, stamp: dict[str, list[Any]]) -> None:
    """Best effort: a read-only root still verifies, by hashing every time."""
    try:
        atomic_write_text(stamp_path(folder), json.dumps(stamp, sort_keys=True))
    except OSError:
        pass
