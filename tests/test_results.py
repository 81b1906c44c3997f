"""What an interruption leaves on disk is never trusted: cut-off lines, half-written files."""

import json

from skray.report import rebuild


def test_report_skips_a_cut_off_line_and_ignores_half_written_files(tmp_path):
    (tmp_path / "experiment.json").write_text(json.dumps({"command": "train", "config": {}}))
    trial = tmp_path / "run_trial_abc12_00000_0_method=sk_prefix"
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps({"method": "sk_prefix", "lr": 0.001}))
    first = {"trial_id": "abc12_00000", "step": 0, "zero_shot_acc": 0.5, "best_val_acc": 0.5}
    last = {**first, "step": 4, "best_val_acc": 0.75, "test_acc": 0.7, "done": True}
    (trial / "result.json").write_text(json.dumps(first) + "\n" + json.dumps(last)[:40])  # killed mid-line
    half = tmp_path / "run_trial_abc12_00001_1_method=sk_prompt"
    half.mkdir()
    (half / "params.json").write_text('{"method": "sk_pr')  # killed while Tune wrote it
    (tmp_path / ".results.csv.tmp").write_text("trial,met")  # a write that never reached its rename

    table = rebuild(str(tmp_path))
    assert len(table) == 1
    row = table.iloc[0]
    assert row.best_val_acc == 0.5
    assert row.status == "interrupted"
    written = (tmp_path / "results.csv").read_text().splitlines()
    assert len(written) == 2
    assert written[0].startswith("trial,")
