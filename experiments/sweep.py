"""Entry script for `ray submit cluster.yaml experiments/sweep.py [CONFIG] [--set key=value ...]`.

`ray submit` copies this file to the head node and runs it there with python; the repository
itself is already on every node at ~/skray (cluster.yaml's file_mounts), so the config path
defaults to the quickstart there. It runs `skray tune` against the cluster it is on.
"""

import sys
from pathlib import Path

from skray.cli import main

DEFAULT_CONFIG = str(Path.home() / "skray" / "experiments" / "quickstart.yaml")

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("--"):
        args = [DEFAULT_CONFIG, *args]
    sys.exit(main(["tune", *args, "--address", "auto"]))
