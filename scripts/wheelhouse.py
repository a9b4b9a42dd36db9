"""The wheelhouse for air-gapped image builds: every wheel an image installs, fetched on a
connected machine, so that the Dockerfile's `pip install --no-index --find-links /wheelhouse`
needs no network (see docs/operator.md, "Images").

  python scripts/wheelhouse.py operator trainer reward         # fill wheelhouse/ from the locks
  python scripts/wheelhouse.py --lock operator trainer reward  # re-resolve images/<target>.lock

Each image's pinned set is images/<target>.lock (pip requirements, ``name==version``), installed
as constraints by the Dockerfile; torch is pinned there by TORCH_VERSION instead, since the CUDA
and CPU builds differ (the wheelhouse holds the CPU build, ``+cpu``). Wheels are cached in one
pool under ~/.cache/rlaif-operator/wheels, a stamp per (lock, interpreter, torch) records a
complete download, and every file lands atomically; a hit needs no network. Run it with the
image's Python (3.11 for the bookworm bases; the wheels are for this interpreter and platform).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "images"
WHEELHOUSE = REPO / "wheelhouse"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlaif-operator"
POOL = CACHE / "wheels"
EXTRAS = {"operator": "operator", "trainer": "trainer", "reward": "rewards"}
TORCH_TARGETS = {"trainer", "reward"}
# The project's wheel is built from source by the Dockerfile; its build backend comes from here.
BUILD_REQUIREMENTS = ["setuptools>=68", "wheel"]


def torch_version() -> str:
    """The CPU build of the torch pinned by the Dockerfile (TORCH_VERSION)."""
    found = re.search(r"^ARG TORCH_VERSION=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    if not found:
        raise SystemExit("Dockerfile: no 'ARG TORCH_VERSION=<version>' line")
    return f"{found.group(1)}+cpu"


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_of(wheel: str) -> tuple[str, str]:
    """(normalized name, version) of a wheel file name."""
    name, version = wheel.split("-")[:2]
    return normalize(name), version


def pip(*args: str) -> None:
    """pip of this interpreter; its output only on failure, with the command."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def into_pool(folder: Path) -> list[str]:
    """Move the wheels of a download folder into the pool (atomic renames); their names."""
    POOL.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in folder.glob("*.whl"))
    for name in names:
        os.replace(folder / name, POOL / name)
    return names


def lock(target: str) -> None:
    """Resolve the target's extra afresh (network) and rewrite images/<target>.lock."""
    torch = [f"torch=={torch_version()}"] if target in TORCH_TARGETS else []
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        pip("wheel", "-q", "--find-links", str(POOL), "-w", tmp,
            f"{REPO}[{EXTRAS[target]}]", *BUILD_REQUIREMENTS, *torch)
        names = into_pool(Path(tmp))
    pins = sorted(dist_of(n) for n in names)
    lines = [f"{name}=={version}" for name, version in pins
             if name not in ("rlaif-operator", "torch")]
    header = (f"# The {target} image's pinned Python packages (extra '{EXTRAS[target]}' and the "
              "build backend),\n# resolved by scripts/wheelhouse.py --lock for CPython "
              f"{sysconfig.get_python_version()}; torch is pinned by TORCH_VERSION.\n")
    (LOCKS / f"{target}.lock").write_text(header + "\n".join(lines) + "\n")
    print(f"images/{target}.lock: {len(lines)} packages")


def requirements(target: str) -> list[str]:
    """The pins of a lock file (and the CPU torch of the targets that need it)."""
    path = LOCKS / f"{target}.lock"
    if not path.exists():
        raise SystemExit(f"{path}: missing; run scripts/wheelhouse.py --lock {target}")
    pins = [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    return pins + ([f"torch=={torch_version()}"] if target in TORCH_TARGETS else [])


def fetch(target: str) -> list[str]:
    """The wheel files of a target's lock, downloaded once into the pool."""
    pins = requirements(target)
    key = hashlib.sha256("\n".join([sys.version, sysconfig.get_platform(), *pins]).encode())
    stamp = POOL / f".{target}-{key.hexdigest()[:16]}.files"
    if stamp.exists():
        names = stamp.read_text().split()
        if all((POOL / n).exists() for n in names):
            return names
    POOL.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("\n".join(pins) + "\n")
        out = Path(tmp) / "wheels"
        # pip wheel: a package published only as an sdist (deepspeed) is built into a wheel.
        pip("wheel", "-q", "--no-deps", "--find-links", str(POOL), "-w", str(out), "-r", str(reqs))
        names = into_pool(out)
    want = {normalize(p.split("==")[0]) for p in pins}
    missing = want - {dist_of(n)[0] for n in names}
    if missing:
        raise SystemExit(f"images/{target}.lock: no wheel for {sorted(missing)}")
    partial = stamp.with_suffix(".tmp")
    partial.write_text("\n".join(names) + "\n")
    partial.replace(stamp)
    return names


def fill(names: set[str]) -> None:
    """Add these wheels to wheelhouse/: hard links into the pool, copies across disks. Wheels of
    other targets or older locks stay: harmless, since every install is pinned by its lock."""
    WHEELHOUSE.mkdir(exist_ok=True)
    for name in sorted(names - {p.name for p in WHEELHOUSE.iterdir()}):
        try:
            os.link(POOL / name, WHEELHOUSE / name)
        except OSError:
            shutil.copy2(POOL / name, WHEELHOUSE / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", choices=sorted(EXTRAS))
    parser.add_argument("--lock", action="store_true", help="re-resolve images/<target>.lock")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.lock:
        for target in args.targets:
            lock(target)
    names: set[str] = set()
    for target in args.targets:
        names.update(fetch(target))
    fill(names)
    print(f"wheelhouse/: {len(names)} wheels for {', '.join(args.targets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
