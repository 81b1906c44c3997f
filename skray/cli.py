"""Command line: `skray train|tune|compare|scale CONFIG [--set k=v]`, `skray report RUN_DIR [...] [--into DIR]`,
`skray predict SOURCE INPUT`, `skray export SOURCE --out DIR`. Parsing only; each command's modules
are imported when it runs (``--help`` must not load torch and Ray).

Exit codes: 0 done; 1 some trial failed (the table is written); 2 bad input (one line, nothing
launched); 3 an internal error (a bug: the traceback, then one line); 130 interrupted."""

from __future__ import annotations

import argparse
import sys
import traceback

from skray.commands import COMMANDS
from skray.errors import (
    INPUT_ERROR,
    INTERNAL_ERROR,
    INTERRUPTED,
    SOME_TRIALS_FAILED,
    ConfigError,
    Interrupted,
    SkrayError,
)


def add_source(parser: argparse.ArgumentParser) -> None:
    """The trained model `predict` and `export` read (``skray.predict.find_checkpoint``)."""
    parser.add_argument(
        "source",
        metavar="RUN_DIR|CHECKPOINT",
        help="a run directory (its best trial's checkpoint), a trial's folder (its newest) or a checkpoint",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skray", description="SK-Tuning on Ray: train, search and report.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        cmd = sub.add_parser(name, help=command.help)
        cmd.add_argument("config", help="experiment YAML")
        cmd.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. train.lr=1e-3",
        )
        cmd.add_argument(
            "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)"
        )
        cmd.add_argument(
            "--retry-errored",
            action="store_true",
            help="resuming the same run: run its failed trials again from their last checkpoint "
            "(default: they stay failed; interrupted trials always go on)",
        )
        cmd.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="Ray's own output (per-report tables, every worker's log) instead of skray's progress lines; "
            "without it that output goes to RUN_DIR/logs/",
        )
    rep = sub.add_parser(
        "report",
        help="rebuild the tables (and plots) of a run directory, or merge compare runs done in pieces",
    )
    rep.add_argument("run_dir", nargs="+", metavar="RUN_DIR")
    rep.add_argument(
        "--into",
        default=None,
        metavar="DIR",
        help="compare runs of one experiment, each over some of its methods: their results and per-row test "
        "predictions (no checkpoints) copied into DIR (new, or an earlier merge), its tables over them all",
    )
    pred = sub.add_parser("predict", help="label a file's rows with a trained checkpoint (a run's best by default)")
    add_source(pred)
    pred.add_argument(
        "input", metavar="INPUT", help="rows to label: .csv, .jsonl or .parquet with the run's text column(s)"
    )
    pred.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="where to write: .csv, .jsonl or .parquet (default: beside INPUT, <stem>.predictions.csv; "
        ".jsonl for token classification)",
    )
    pred.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    pred.add_argument("--batch-size", type=int, default=32, help="rows per forward pass")
    exp = sub.add_parser("export", help="write a checkpoint (a run's best by default) as a PEFT adapter")
    add_source(exp)
    exp.add_argument("--format", choices=["peft"], default="peft", help="peft: a prompt- or prefix-tuning adapter")
    exp.add_argument(
        "--out", required=True, metavar="DIR", help="a new (or empty) folder for the adapter, head and README.md"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "predict":
            from skray.predict import predict

            out = predict(args.source, args.input, args.out, device=args.device, batch_size=args.batch_size)
            print(f"predictions: {out}")
            return 0
        if args.command == "export":
            from skray.export import export_peft

            print(f"PEFT adapter: {export_peft(args.source, args.out)}/ (how to load it: README.md there)")
            return 0
        from skray.report import rebuild, show

        if args.command == "report":
            if args.into is None and len(args.run_dir) > 1:
                raise ConfigError("several run directories are merged into one folder: add --into DIR")
            if args.into is None:
                print(show(rebuild(args.run_dir[0])))
                return 0
            from skray.merge import merge_runs

            print(show(merge_runs(args.run_dir, args.into)))
            print(f"\nmerged into {args.into}/ (results and test predictions, no checkpoints)")
            return 0
        from skray import storage
        from skray.config import load_config
        from skray.results import load_results
        from skray.run import run_experiment

        cfg = load_config(args.config, args.overrides)
        run_dir, table = run_experiment(
            cfg,
            command=args.command,
            address=args.address,
            retry_errored=args.retry_errored,
            verbose=args.verbose,
        )
        print(show(table))
        print(f"\nresults: {run_dir}/ ({COMMANDS[args.command].files})")
        if not storage.exists(storage.join(run_dir, "finished")):
            print("skray: interrupted before every trial ended; the table holds what was reported", file=sys.stderr)
            return INTERRUPTED
        failed = int((load_results(run_dir)["status"] == "error").sum())  # the trials, whatever the table shows
        if failed:
            print(
                f"skray: {failed} of the run's trials failed; their errors are in the table's error column",
                file=sys.stderr,
            )
            return SOME_TRIALS_FAILED
        return 0
    except Interrupted as err:
        print(f"skray: {err}", file=sys.stderr)
        return INTERRUPTED
    except SkrayError as err:
        print(f"skray: error: {err}", file=sys.stderr)
        return INPUT_ERROR
    except Exception as err:  # a bug, not the input: its own exit code, with the traceback to report
        traceback.print_exc()
        first = (str(err).strip().splitlines() or [""])[0][:200]
        print(
            f"skray: internal error (exit {INTERNAL_ERROR}): {type(err).__name__}: {first}; the traceback is above "
            "(the workers' output: RUN_DIR/logs/); please report it",
            file=sys.stderr,
        )
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
