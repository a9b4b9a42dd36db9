"""Run an image the way the operator's pods run it: its user (uid 10001), a read-only root
filesystem and a writable tmpfs on /tmp.

  python scripts/image_run.py [--network none|host] [--volume SRC:DST[:rw]] [--env K=V]
      [--entrypoint CMD] IMAGE [ARG...]

docker and podman do it with ``run --read-only --tmpfs /tmp``. buildah has no such option, so
with buildah (the engine of machines without a daemon) the image's root is mounted, bound
read-only in a private mount namespace, and entered with chroot as the image's user, with the
image's environment, entry point and working directory. That needs root or ``buildah unshare``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def engine() -> str:
    """The engine scripts/engine.sh picks (and exports its storage settings into os.environ)."""
    out = subprocess.run(
        ["bash", "-c", "source scripts/engine.sh && detect_engine && env -0"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    for key in ("ENGINE", "CONTAINERS_STORAGE_CONF", "BUILDAH_ISOLATION"):
        if key in env:
            os.environ[key] = env[key]
    return env["ENGINE"]


def image_config(image: str) -> dict:
    """The OCI config of a local buildah image (Env, Entrypoint, Cmd, User, WorkingDir)."""
    out = subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"{image}: not a local image ({out.stderr.strip()})")
    config: dict = json.loads(out.stdout)["OCIv1"]["config"]
    return config


@contextmanager
def mounted(image: str) -> Iterator[Path]:
    """The root filesystem of a fresh working container of the image, removed afterwards."""
    ctr = subprocess.run(["buildah", "from", "--pull-never", "--quiet", image],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        root = subprocess.run(["buildah", "mount", ctr], capture_output=True, text=True,
                              check=True).stdout.strip()
        yield Path(root)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)


def split_volume(volume: str) -> tuple[str, str, str]:
    """SRC:DST[:ro|rw] -> (SRC, DST, mode); read-only unless rw is asked for."""
    src, dst, *mode = volume.split(":")
    if not src.startswith("/") or not dst.startswith("/") or mode not in ([], ["ro"], ["rw"]):
        raise SystemExit(f"--volume {volume}: expected /SRC:/DST[:ro|rw]")
    return src, dst, (mode or ["ro"])[0]


def chroot_script(root: Path, user: str, workdir: str, env: list[str], argv: list[str],
                  network: str, volumes: list[str]) -> list[str]:
    """The command that enters the read-only root (in new mount, pid and maybe net namespaces)."""
    r = shlex.quote(str(root))
    uid, _, gid = user.partition(":")
    dirs, binds = [], []
    for volume in volumes:  # mount points made in the working container, before it is read-only
        src, dst, mode = (shlex.quote(p) for p in split_volume(volume))
        dirs.append(f"mkdir -p {r}{dst}")
        binds += [f"mount --bind {src} {r}{dst}", f"mount -o remount,bind,{mode} {r}{dst}"]
    setup = " && ".join([
        *dirs, f"mount --bind {r} {r}", f"mount -o remount,bind,ro {r}",
        f"mount -t tmpfs -o mode=1777 tmpfs {r}/tmp", f"mount -t proc proc {r}/proc",
        f"mount --rbind /dev {r}/dev", f"mount --rbind -o ro /sys {r}/sys", *binds,
        f"cd {r}",
        "exec chroot --userspec=" + shlex.quote(f"{uid}:{gid or uid}")
        + f" --groups={shlex.quote(gid or uid)} {r} /usr/bin/env -i "
        + shlex.join([*env, "/bin/sh", "-c", 'cd "$0" && exec "$@"', workdir, *argv]),
    ])
    namespaces = ["--mount", "--pid", "--fork", "--propagation", "private"]
    if network == "none":
        namespaces.append("--net")
    return ["unshare", *namespaces, "sh", "-c", setup]


def call(cmd: list[str]) -> int:
    """Run cmd in its own process group and pass SIGTERM and SIGINT on to the whole group (the
    container's main process gets them, as from a kubelet); its exit code."""
    proc = subprocess.Popen(cmd, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        os.killpg(proc.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    return proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", choices=["none", "host"], default="none")
    parser.add_argument("--entrypoint", help="replaces the image's entry point (and its CMD)")
    parser.add_argument("--volume", action="append", default=[], metavar="SRC:DST[:rw]",
                        help="bind a host folder, read-only unless :rw")
    parser.add_argument("--env", action="append", default=[], metavar="K=V",
                        help="set in the container, over the image's environment")
    parser.add_argument("image")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    name = engine()
    if name != "buildah":
        cmd = [name, "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--network", args.network]
        cmd += ["--volume={}:{}:{}".format(*split_volume(v)) for v in args.volume]
        cmd += [f"--env={env}" for env in args.env]
        if args.entrypoint:
            cmd += ["--entrypoint", args.entrypoint]
        return call([*cmd, args.image, *args.args])
    config = image_config(args.image)
    entry = [args.entrypoint] if args.entrypoint else config.get("Entrypoint") or []
    argv = [*entry, *(args.args or ([] if args.entrypoint else config.get("Cmd") or []))]
    user = config.get("User") or "0:0"
    with mounted(args.image) as root:
        env = [*(config.get("Env") or []), *args.env]
        cmd = chroot_script(root, user, config.get("WorkingDir") or "/", env, argv,
                            args.network, args.volume)
        return call(cmd)


if __name__ == "__main__":
    sys.exit(main())
