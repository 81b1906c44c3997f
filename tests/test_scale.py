"""`skray scale`: the grid, one short Ray Train + DeepSpeed run per point, failed points as rows."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from skray.cli import main
from skray.commands import scale
from skray.config import parse_config
from skray.report import rebuild


def test_grid_skips_invalid_offload_pairs():
    cfg = parse_config(
        {"scale": {"num_workers": [1, 2], "zero_stages": [0, 1, 2, 3], "offloads": ["none", "optimizer", "all"]}}
    )
    labels = [scale.label(p) for p in scale.points(cfg)]
    assert len(labels) == 16  # per worker count: stage 0 none; 1-2 none/optimizer; 3 none/optimizer/all
    assert "w1-z0-optimizer-mb8" not in labels
    assert "w2-z2-all-mb8" not in labels
    assert "w2-z3-all-mb8" in labels


def test_scaling_efficiency_is_relative_to_one_worker_of_the_same_setting():
    point = lambda w, z: {"num_workers": w, "zero_stage": z, "offload": "none", "micro_batch_size": 8}  # noqa: E731
    trials = pd.DataFrame(
        {
            "point": [point(1, 2), point(2, 2), point(2, 3)],
            "steady_samples_per_s": [10.0, 15.0, 9.0],
            "steady_tokens_per_s": [100.0, 150.0, 90.0],
            "peak_mem_mb": [1.0, 1.0, 1.0],
            "status": ["completed"] * 3,
        }
    )
    table = scale.summary_table(trials).set_index("point")
    assert table.loc["w1-z2-none-mb8", "scaling_efficiency"] == 1.0
    assert table.loc["w2-z2-none-mb8", "scaling_efficiency"] == 0.75
    assert pd.isna(table.loc["w2-z3-none-mb8", "scaling_efficiency"])  # no one-worker ZeRO-3 point to compare with


@pytest.mark.slow
def test_scale_grid_measures_each_point_and_keeps_failed_ones(ray_cluster, tiny_experiment, tmp_path):
    cfg = tiny_experiment(train__max_steps=4, train__untimed_steps=1, train__eval_every=4, train__max_failures=0)
    cfg = cfg.model_copy(
        update={
            "scale": parse_config(
                {
                    "scale": {
                        "num_workers": [1, 2],
                        "zero_stages": [3],
                        "offloads": ["all"],  # ZeRO-Infinity: parameters and optimizer in CPU memory
                        "micro_batch_sizes": [4, 4096],
                    }
                }
            ).scale
        }
    )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    assert main(["scale", str(path)]) == 1  # two points failed: the grid went on, the exit code says so
    (run_dir,) = [str(p) for p in tmp_path.iterdir() if p.is_dir()]
    table = rebuild(run_dir).set_index("point")
    for point in ("w1-z3-all-mb4", "w2-z3-all-mb4"):
        row = table.loc[point]
        assert row.status == "completed"
        assert row.steady_samples_per_s > 0
        assert row.steady_tokens_per_s > 0
        assert row.peak_mem_mb > 0
        assert row.est_mem_mb > 0
        assert row.first_step_s > 0
    one, two = table.loc["w1-z3-all-mb4"], table.loc["w2-z3-all-mb4"]
    assert two.param_mb_per_worker < one.param_mb_per_worker  # ZeRO-3 splits the parameters over the workers
    assert two.scaling_efficiency == pytest.approx(two.steady_samples_per_s / (2 * one.steady_samples_per_s))
    for point in ("w1-z3-all-mb4096", "w2-z3-all-mb4096"):
        assert table.loc[point].status == "error"
        assert "micro_batch_size 4096" in table.loc[point].error
    for name in ("scale.csv", "scale.parquet", "scale.md", "scaling.png"):
        assert (tmp_path / run_dir.rsplit("/", 1)[-1] / name).stat().st_size > 0


@pytest.mark.slow
def test_gpu_check_runs_small_on_cpu():
    """benchmarks/gpu_check.sh on a machine without a GPU: the same path on a tiny Llama, every point completed."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
    proc = subprocess.run(
        [str(script)], capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|") and "completed" in line]
    assert len(table) == 2  # on CPU: each method at ZeRO 3 (a GPU adds ZeRO 2 and the 3B row)
    assert {"sk_prefix", "prefix_tuning"} <= {cell.strip() for line in table for cell in line.split("|")}


@pytest.mark.slow
def test_gpu_smoke_runs_small_on_cpu():
    """benchmarks/gpu_smoke.py (no Ray): step 0 equals the prompt read as text, ZeRO 2 and 3 both train."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_smoke.py"
    proc = subprocess.run([sys.executable, str(script), "--steps", "2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    gap = float(proc.stdout.split("max |diff| of the last hidden state = ")[1].split()[0])
    assert gap < 1e-4
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("|")]
    statuses = [cells[-2].strip() for cells in rows[2:]]  # below the header and its rule
    assert statuses == ["ok", "ok"], proc.stdout[-2000:]


@pytest.mark.slow
def test_gpu_packing_runs_small_without_ray(tiny_llama_dir, tmp_path):
    """benchmarks/gpu_packing.py where Ray cannot be imported (as on the lent GPU machine): a solo
    configuration (SKTuningRecipe) and a slot of up to 2 (PackedSlot, its seats timed: pack auto) run
    through at ZeRO 3 in real bf16, no member failing: the slot the H200 saw crash (fp32 prefix keys
    beside bf16 queries) crashes so here."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_packing.py"
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "ray.py").write_text("raise ImportError('no Ray on this machine')\n")
    args = ["--backbone", tiny_llama_dir, "--data", "rotten_tomatoes_critics", "--packs", "2", "--auto", "--solo", "1"]
    args += ["--profile"]
    args += ["--steps", "2", "--eval-every", "2", "--set", "train.zero_stage=3", "--set", "train.precision=bf16"]
    for key in ("max_train_samples=32", "max_eval_samples=16", "max_test_samples=16", "template={text}"):
        args += ["--set", f"data.{key}"]
    env = {**os.environ, "PYTHONPATH": f"{blocked}{os.pathsep}{Path(__file__).parents[1]}"}
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    arms = {line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert {"solo", "packed 2"} <= arms, proc.stdout[-2000:]
    assert '"failed": 0' in proc.stdout
    assert "skray: slot 0: pack auto: " in proc.stdout  # its seats timed on real passes through ZeRO 3's hooks
    assert "profile: wall " in proc.stdout  # --profile: where the solo wall went
    assert "tottime" in proc.stdout
