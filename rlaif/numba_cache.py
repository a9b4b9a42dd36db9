"""One numba cache per user for librosa's kernels, safe for processes that start together.

librosa compiles its kernels with ``cache=True``, which by default keeps the machine code
beside librosa's sources. Processes compiling the same kernel at once can leave one process's
index beside another's code (gufuncs are two cache entries each); every later process that
loads the pair dies with SIGSEGV. Here the cache lives in ``cache_root()/numba``
(``NUMBA_CACHE_DIR``, set by ``configure`` before numba is imported), and ``exclusive`` lets
one process at a time run the first calls that compile or load kernels. A process that died
while holding the lock leaves its marker behind: the next one wipes the cache and compiles
afresh, so a damaged cache heals instead of crashing every later start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rlaif.files import cache_root

log = logging.getLogger(__name__)

ENV = "NUMBA_CACHE_DIR"
MARKER = ".compiling"  # present while a process holds the lock


def configure() -> Path:
    """Point numba at the shared cache unless the user chose one; must run before numba is
    imported (numba reads its configuration once)."""
    return Path(os.environ.setdefault(ENV, str(cache_root() / "numba")))


@contextmanager
def exclusive() -> Iterator[None]:
    """Run the block (first kernel calls: compile or load) alone among this user's processes."""
    directory = configure()
    directory.mkdir(parents=True, exist_ok=True)
    # The lock file sits beside the cache, not in it: healing removes the whole folder.
    with open(directory.with_name(directory.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        marker = directory / MARKER
        if marker.exists():
            log.warning("a process died while compiling into %s; starting from an empty cache",
                        directory)
            shutil.rmtree(directory)
            directory.mkdir()
        marker.write_text(str(os.getpid()))
        try:
            yield
        finally:  # an exception leaves a consistent cache (numba writes code, then index)
            marker.unlink()
