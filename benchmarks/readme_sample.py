"""The README's Quickstart output sample, printed from a real run directory, so it is never hand-edited.

    .venv/bin/python benchmarks/readme_sample.py [RUN_DIR]    # default: the newest runs/quickstart-tune-*/

Prints what `skray train` or `skray tune` closes with, rebuilt by skray's own readers from what the run
left on disk: the table (the columns that fit the README's width), the line on the best trial, and the
`results:` line. Writes nothing. Paste its output into README.md's Quickstart sample.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skray.commands import COMMANDS
from skray.report import show
from skray.results import experiment, format_table, load_results

# The README's sample is narrower than the console's table (skray.results.SHOWN).
COLUMNS = [
    "trial",
    "wording",
    "prefix_length",
    "lr",
    "zero_shot_test_acc",
    "majority_test_acc",
    "best_val_acc",
    "test_acc",
    "test_f1",
    "trainable_params",
    "samples_per_s",
    "status",
]
WORDING_CHARS = 30


def sample(run_dir: str) -> str:
    """The closing lines of a train or tune run, from RUN_DIR."""
    table = load_results(run_dir)
    # What the console prints below its table (the best trial's line), whatever it says today.
    closing = show(table).splitlines()[len(format_table(table).splitlines()) :]
    shown = table[[c for c in COLUMNS if c in table.columns and table[c].notna().any()]]
    if "wording" in shown.columns:
        shown = shown.assign(wording=shown["wording"].astype(str).str.slice(0, WORDING_CHARS))
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    command = COMMANDS.get(experiment(run_dir).get("command"))
    files = f" ({command.files})" if command else ""
    return "\n".join([text, *closing, "", f"results: {run_dir.rstrip('/')}/{files}"])


def newest(root: str = "runs", name: str = "quickstart-tune-") -> str:
    found = sorted(p for p in Path(root).glob(f"{name}*") if (p / "finished").exists())
    if not found:
        raise SystemExit(f"no finished {root}/{name}*/ run directory: run `make demo` first, or name one")
    return str(found[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="a train or tune run directory (default: the newest quickstart)")
    args = parser.parse_args(argv)
    print(sample(args.run_dir or newest()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
