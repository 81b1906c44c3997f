"""The CLI's exit codes: a mistake in the input is 2, a bug is 3 with its traceback, never the 1 of a failed trial."""

from __future__ import annotations

import skray.report
from skray.cli import main
from skray.errors import INPUT_ERROR, INTERNAL_ERROR, SOME_TRIALS_FAILED, SkrayError


def test_an_internal_error_exits_3_with_its_traceback_and_one_line(monkeypatch, capsys, tmp_path):
    def broken(run_dir):
        raise RuntimeError("a bug\nsecond line")

    monkeypatch.setattr(skray.report, "rebuild", broken)
    assert main(["report", str(tmp_path)]) == INTERNAL_ERROR == 3
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):"
    assert err[-1].startswith("skray: internal error (exit 3): RuntimeError: a bug; the traceback is above")
    assert INTERNAL_ERROR not in (SOME_TRIALS_FAILED, INPUT_ERROR)


def test_a_users_mistake_still_exits_2_in_one_line(monkeypatch, capsys, tmp_path):
    def refused(run_dir):
        raise SkrayError(f"{run_dir}: no such run directory")

    monkeypatch.setattr(skray.report, "rebuild", refused)
    assert main(["report", str(tmp_path)]) == INPUT_ERROR == 2
    assert capsys.readouterr().err == f"skray: error: {tmp_path}: no such run directory\n"
