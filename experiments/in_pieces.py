"""A comparison too long for one sitting, one method at a time, each merged into one folder as it ends.

    python experiments/in_pieces.py experiments/verdict_full_rt.yaml docs/verdict_full_rt [--methods N]

Each method of the config's ``compare.methods`` that the folder does not hold yet runs as its own
compare run (``--set 'compare.methods=[<entry>]' --set name=<name>-<method>``: its search and seeds)
and is then merged into the folder (``skray report RUN --into FOLDER``: results and per-row test
predictions, no checkpoints). Keep the folder (in git, or on storage that outlives the machine) and
run the same command again to go on: a method cut midway resumes from its run directory if that is
still there, else starts again. ``--methods N`` stops after N methods.
"""

import argparse
import json
import subprocess
import sys
import time

from skray import storage
from skray.config import compare_labels, load_config, method_run_name
from skray.errors import SOME_TRIALS_FAILED
from skray.results import experiment


def pieces(config: str, folder: str) -> list[tuple[str, list[str]]]:
    """(method label, --set overrides) for every method of ``config`` that ``folder`` does not hold."""
    cfg = load_config(config)
    held = (experiment(folder).get("config") or {}).get("compare", {}).get("methods", [])
    todo = []
    for label, entry in zip(compare_labels(cfg.compare.methods, cfg.train.lr), cfg.compare.methods, strict=True):
        if entry not in held:
            name = method_run_name(cfg.name, label)
            todo.append((label, [f"compare.methods=[{json.dumps(entry)}]", f"name={name}"]))
    return todo


def skray(args: list[str]) -> int:
    """One skray command in its own process, so that each piece runs the code on disk when it starts,
    its driver and its workers alike (a checkout updated between pieces is never half old)."""
    child = subprocess.Popen([sys.executable, "-m", "skray.cli", *args])
    try:
        return child.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the child too: it keeps its run's state, then exits 130
        return child.wait()


def newest_run(cfg_path: str, overrides: list[str]) -> str:
    """The run directory the piece's compare just wrote: its name's newest under storage_path."""
    cfg = load_config(cfg_path, overrides)
    root = storage.location(cfg.storage_path)
    runs = [d for d in storage.subdirs(root) if d.rsplit("/", 1)[-1].startswith(f"{cfg.name}-compare-")]
    return max(runs, key=lambda d: d.rsplit("-", 2)[-2:])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("folder")
    parser.add_argument("--methods", type=int, default=None, help="stop after this many methods")
    args = parser.parse_args()
    todo = pieces(args.config, args.folder)[: args.methods]
    print(f"in_pieces: {len(todo)} method(s) to run: {', '.join(label for label, _ in todo) or 'none'}", flush=True)
    for label, overrides in todo:
        sets = [arg for o in overrides for arg in ("--set", o)]
        start = time.monotonic()
        code = skray(["compare", args.config, *sets])
        if code not in (0, SOME_TRIALS_FAILED):
            sys.exit(code)  # interrupted (the same command goes on), or refused
        if code == SOME_TRIALS_FAILED:
            print(f"in_pieces: {label}: some trials failed; merged all the same (their errors are in the table)")
        code = skray(["report", newest_run(args.config, overrides), "--into", args.folder])
        if code != 0:
            sys.exit(code)
        print(f"in_pieces: {label}: merged after {(time.monotonic() - start) / 60:.0f} min (this sitting)", flush=True)
    sys.exit(0)
