"""A worker's DeepSpeed op builds: a build killed midway leaves torch's build lock, on which every later
run waited for ever, so workers free such leftovers before they build, and never a lock a live build
holds; and every worker builds with the same ninja, whose build log the next run reads."""

import os
import subprocess
import sys
import time
from pathlib import Path

from skray.train import op_builds
from skray.train.op_builds import free_stale_build_locks

HOLD = (  # a build holding its lock, as torch's does
    "import sys, time; from torch.utils.file_baton import FileBaton; FileBaton(sys.argv[1]).try_acquire();"
    "print('held', flush=True); time.sleep(120)"
)


def lock_in(root, op: str):
    (root / op).mkdir()
    return root / op / "lock"


def test_a_killed_builds_lock_is_freed_and_a_live_builds_kept(tmp_path):
    stale, live = lock_in(tmp_path, "deepspeed_shm_comm"), lock_in(tmp_path, "cpu_adam")
    stale.touch()
    builder = subprocess.Popen([sys.executable, "-c", HOLD, str(live)], stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "held"
        assert free_stale_build_locks(tmp_path) == [stale]
        assert live.exists()
        assert not stale.exists()
    finally:
        builder.kill()
        builder.wait()
    assert free_stale_build_locks(tmp_path) == [live]  # its builder killed midway: a leftover now
    assert free_stale_build_locks(tmp_path) == []


def test_on_shared_storage_only_a_lock_older_than_any_build_is_freed(tmp_path, monkeypatch):
    """The builder may be another node there, holding the lock where this machine cannot see it."""
    monkeypatch.setattr(op_builds, "_on_network_fs", lambda path: True)
    young, old = lock_in(tmp_path, "young"), lock_in(tmp_path, "old")
    young.touch()
    old.touch()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert free_stale_build_locks(tmp_path) == [old]
    assert young.exists()


def test_a_worker_frees_the_lock_where_torch_would_wait_on_it_and_builds_with_its_environments_ninja(tmp_path):
    lock = lock_in(tmp_path, "deepspeed_shm_comm")
    lock.touch()
    code = (
        "from torch.utils.cpp_extension import _get_build_directory; from skray.train.recipe import setup_env;"
        "setup_env(False); print(_get_build_directory('deepspeed_shm_comm', False));"
        "import shutil; print(shutil.which('ninja'))"
    )
    env = os.environ | {"TORCH_EXTENSIONS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert f"skray: removed {lock}, a build lock an interrupted build of a DeepSpeed op left" in out
    assert out.splitlines()[-2] == str(lock.parent)  # the folder torch's build of the op locks
    assert not lock.exists()
    assert out.splitlines()[-1] == str(Path(sys.executable).parent / "ninja")  # not a system one on PATH
