"""Crash-safe writes (temp file or folder, fsync, rename, fsync the parent) and the
create-once cache of built-in models."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a torn write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (before renaming it into place)."""
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(Path(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final`` durably, replacing any old one."""
    fsync_tree(tmp)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old)


def cache_root() -> Path:
    """$RLAIF_CACHE, else ~/.cache/rlaif: where built-in models are created once."""
    return Path(os.environ.get("RLAIF_CACHE") or Path.home() / ".cache" / "rlaif")


def build_once(name: str, marker: str, build: Callable[[Path], object]) -> Path:
    """``cache_root()/name``, built by ``build(folder)`` on first use and reused after.

    The folder is built under a temporary name and renamed into place, so a crash never
    leaves a half-built model where the next run looks; ``marker`` (a file the build
    writes last) tells that it is complete. Concurrent first uses may both build; one wins.
    """
    final = cache_root() / name
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        build(tmp / name)
        fsync_tree(tmp / name)
        os.rename(tmp / name, final)
    except OSError:
        if not (final / marker).is_file():  # not a lost race with another process
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
