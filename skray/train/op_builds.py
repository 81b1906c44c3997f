"""Where and how a worker's DeepSpeed ops build (torch's JIT build): in skray's cache, with one ninja,
and never waiting on a lock a killed build left.

Two ninjas were on this machine (pip's, a DeepSpeed dependency, in the environment's bin, and the
system's); each ignores the other's build log, so a run that found the other first on its PATH (an
activated environment, a `ray job submit`) rebuilt the op, ~35 s, and the next run rebuilt it back.

torch builds an op under a lock file (``TORCH_EXTENSIONS_DIR/<op>/lock``, ``torch.utils.file_baton``)
that the building process holds open and removes at the end; a build stopped midway (Ctrl-C during a
first run's ~2-minute build) leaves it, and every later run that loads the op waits on it for ever, with
no word. A lock no process on this machine holds open is such a leftover, unless the folder is on a
network file system, where the builder may be another node: there it has to be older than any build.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import psutil

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "glusterfs")
REMOTE_BUILD_S = 30 * 60  # on shared storage, a lock this old outlived any build (one takes ~2 min here)


def free_stale_build_locks(root: Path) -> list[Path]:
    """Remove the leftover build locks under ``root`` (``TORCH_EXTENSIONS_DIR``) and return them."""
    locks = list(root.glob("*/lock"))
    if not locks:
        return []
    held = _held_open()
    freed = []
    for lock in locks:
        with contextlib.suppress(FileNotFoundError):  # a build ended meanwhile
            stat = lock.stat()
            if str(lock.resolve()) in held:
                continue
            if _on_network_fs(lock) and time.time() - stat.st_mtime < REMOTE_BUILD_S:
                continue
            now = lock.stat()
            if (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns):  # not one taken since we looked
                lock.unlink()
                freed.append(lock)
    return freed


def _held_open() -> set[str]:
    """Every file some process here holds open (those we may look at: a lock is the user's own)."""
    held = set()
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            held.update(f.path for f in proc.open_files())
    return held


def _on_network_fs(path: Path) -> bool:
    mounts = sorted(psutil.disk_partitions(all=True), key=lambda p: len(p.mountpoint), reverse=True)
    where = str(path.resolve())
    mount = next((p for p in mounts if where == p.mountpoint or where.startswith(p.mountpoint.rstrip("/") + "/")), None)
    return mount is not None and (mount.fstype in NETWORK_FS or mount.fstype.startswith("fuse"))


def prepare_op_builds(cache: Path) -> None:
    """Set this worker up for the builds: ``TORCH_EXTENSIONS_DIR`` in ``cache`` unless the user set it,
    the environment's own ninja first on PATH, and the leftover locks there freed (saying so)."""
    import ninja

    root = Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache / "torch_extensions")))
    if os.environ["PATH"].split(os.pathsep)[0] != ninja.BIN_DIR:
        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ['PATH']}"
    for lock in free_stale_build_locks(root):
        print(f"skray: removed {lock}, a build lock an interrupted build of a DeepSpeed op left", flush=True)
