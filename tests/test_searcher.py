"""skray's Optuna searcher driven as Ray Tune drives it (suggest, results, completion), with fake
results and no Ray cluster; and the search section's new keys."""

import json
import pickle
import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from skray.config import SearchConfig, parse_config
from skray.errors import ConfigError
from skray.searcher import OptunaSearcher, Space, study_path

SPACE = Space(wordings=("Is it positive?", "Classify the review.", "Liked it?"), prefix_length=(4, 16), lr=(1e-4, 1e-2))
SEARCH = {"wordings": list(SPACE.wordings), "prefix_length": {"low": 4, "high": 16}, "lr": {"low": 1e-4, "high": 1e-2}}
ONE = [("best_val_acc", "max")]
TWO = [("best_val_acc", "max"), ("trainable_params", "min")]
SWITCH = "the random start-up is over"


def score(config: dict) -> float:
    """A made-up accuracy that depends on the config, so that samplers have something to model."""
    return 0.5 + 0.02 * config["prefix_length"] - 0.1 * (config["wording"] != SPACE.wordings[0])


def final(config: dict, step: int = 48) -> dict:
    """skray's final report: done, with test scores."""
    return {"step": step, "best_val_acc": score(config), "trainable_params": 1000 * config["prefix_length"]} | {
        "test_acc": 0.5,
        "done": True,
    }


def stopped_at(config: dict, step: int) -> dict:
    """The report ASHA stopped a trial at: Ray marks it done too, but it has no test scores."""
    return {"step": step, "best_val_acc": score(config) / 2, "trainable_params": 7, "done": True}


def run(searcher: OptunaSearcher, n: int, prefix: str = "t") -> list[dict]:
    """n trials one after another, each reporting twice and finishing."""
    configs = []
    for i in range(n):
        trial_id = f"{prefix}{i}"
        config = searcher.suggest(trial_id)
        for step in (12, 24):
            searcher.on_trial_result(trial_id, {"step": step, "best_val_acc": score(config) * step / 48})
        searcher.on_trial_complete(trial_id, final(config))
        configs.append(config)
    return configs


def journal(path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name="skray", storage=storage)


@pytest.mark.parametrize(
    ("name", "sampler"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("gp", optuna.samplers.GPSampler),
        ("random", optuna.samplers.RandomSampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
        ("grid", optuna.samplers.GridSampler),
    ],
)
def test_sampler_choice(name, sampler):
    searcher = OptunaSearcher(SPACE, ONE, sampler=name)
    assert isinstance(searcher.study.sampler, sampler)
    config = searcher.suggest("t0")
    assert set(config) == {"method", "wording", "prefix_length", "lr"}
    assert config["method"] == "sk_prefix"


def test_startup_follows_the_rule_and_the_switch_is_said_once(capsys):
    search = SearchConfig.model_validate({**SEARCH, "num_trials": 12})
    assert search.startup == 3  # a quarter of 12; TPE's default of 10 would leave 2 modelled trials
    assert [SearchConfig.model_validate({**SEARCH, "num_trials": n}).startup for n in (1, 4, 40)] == [1, 2, 10]
    searcher = OptunaSearcher(SPACE, ONE, startup_trials=search.startup)
    assert searcher.study.sampler._n_startup_trials == 3
    run(searcher, 3)
    assert SWITCH not in capsys.readouterr().err  # 3 finished, but the line comes with the next suggest
    run(searcher, 2, prefix="u")
    err = capsys.readouterr().err
    assert err.count(SWITCH) == 1
    assert err.startswith("skray: optuna tpe: 3 trials finished")


def test_stopped_trials_are_pruned_finished_complete_errors_fail():
    searcher = OptunaSearcher(SPACE, ONE)
    stopped, done, failed = (searcher.suggest(t) for t in ("stopped", "done", "failed"))
    for trial_id, config in (("stopped", stopped), ("done", done)):
        searcher.on_trial_result(trial_id, {"step": 0, "best_val_acc": 0.4})
        searcher.on_trial_result(trial_id, {"step": 12, "best_val_acc": score(config) / 2})
    searcher.on_trial_complete("stopped", stopped_at(stopped, 24))  # ASHA's: Ray did not pass it as a result
    searcher.on_trial_complete("done", final(done))
    searcher.on_trial_complete("failed", error=True)
    searcher.on_trial_complete("done", final(done))  # told once; a second notice changes nothing
    trials = searcher.study.trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL]
    # PRUNED, never COMPLETE; as Optuna does for a pruned trial, its value is its last intermediate one
    assert trials[0].value == score(stopped) / 2
    assert trials[0].intermediate_values == {0: 0.4, 12: score(stopped) / 2, 24: score(stopped) / 2}
    assert trials[1].value == pytest.approx(score(done))
    assert trials[1].intermediate_values == {0: 0.4, 12: score(done) / 2}


def test_two_objectives(tmp_path):
    searcher = OptunaSearcher(SPACE, TWO, storage=tmp_path / "optuna.journal")
    assert (searcher.metric, searcher.mode) == (["best_val_acc", "trainable_params"], ["max", "min"])
    done, stopped = searcher.suggest("done"), searcher.suggest("stopped")
    searcher.on_trial_result("done", {"step": 12, "best_val_acc": 0.6, "trainable_params": 5})  # no error
    searcher.on_trial_complete("done", final(done))
    searcher.on_trial_complete("stopped", stopped_at(stopped, 12))
    study = searcher.study
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["best_val_acc", "trainable_params"]
    first, second = study.trials
    assert (first.state, first.values) == (TrialState.COMPLETE, [score(done), 1000.0 * done["prefix_length"]])
    assert second.state == TrialState.PRUNED
    assert second.user_attrs == {
        "trial": "stopped",  # the results table's trial column
        "last_step": 12.0,
        "last_best_val_acc": score(stopped) / 2,
        "last_trainable_params": 7,
    }


def test_a_final_report_without_an_objective_fails(capsys):
    searcher = OptunaSearcher(SPACE, [("best_val_acc", "max"), ("steady_samples_per_s", "max")])
    config = searcher.suggest("t0")
    searcher.on_trial_complete("t0", final(config) | {"steady_samples_per_s": float("nan")})
    assert searcher.study.trials[0].state == TrialState.FAIL
    assert "without a value of steady_samples_per_s" in capsys.readouterr().err


def test_the_study_reloads_from_its_journal(tmp_path):
    path = tmp_path / "run" / "optuna.journal"
    searcher = OptunaSearcher(SPACE, TWO, storage=path)
    run(searcher, 3)
    searcher.suggest("running")
    reloaded = journal(path).trials
    ours = searcher.study.trials
    assert [(t.number, t.state, t.params, t.values) for t in reloaded] == [
        (t.number, t.state, t.params, t.values) for t in ours
    ]
    assert [t.state for t in reloaded] == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING]


def test_save_and_restore_go_on_where_the_run_stopped(tmp_path):
    path, state = tmp_path / "optuna.journal", str(tmp_path / "searcher-state.pkl")
    first = OptunaSearcher(SPACE, ONE, storage=path)
    tuner_copy = pickle.loads(pickle.dumps(first))  # Ray pickles the searcher with the Tuner, before fit
    run(first, 2)
    running = first.suggest("running")
    first.on_trial_result("running", {"step": 12, "best_val_acc": 0.3})
    first.save(state)
    first.suggest("lost")  # asked after the last save: no Ray trial will finish it

    tuner_copy.restore(state)
    tuner_copy.on_trial_result("running", {"step": 12, "best_val_acc": 0.9})  # reported already: skipped
    tuner_copy.on_trial_result("running", {"step": 24, "best_val_acc": 0.5})
    tuner_copy.on_trial_complete("running", final(running))
    assert tuner_copy.suggest("next") is not None
    trials = journal(path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.FAIL, TrialState.RUNNING]
    assert trials[2].intermediate_values == {12: 0.3, 24: 0.5}
    assert tuner_copy._numbers["next"] == 4  # numbering goes on

    (tmp_path / "optuna.journal").unlink()  # a driver elsewhere: the checkpoint carries the journal
    again = OptunaSearcher(SPACE, ONE, storage=path)
    again.restore(state)
    assert [t.state for t in again.study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]  # as saved

    other = OptunaSearcher(SPACE, ONE, seed=1, storage=path)
    with pytest.raises(ValueError, match="different search"):
        other.restore(state)


def test_a_failed_trial_run_again_reaches_the_study(tmp_path):
    """--retry-errored: a trial told FAIL runs again from its checkpoint and finishes. Optuna cannot
    reopen it, so its rerun is a new trial with the same parameters that ends COMPLETE (what TPE
    learns from), and the Ray trial maps to it, as the results table does."""
    path, state = tmp_path / "optuna.journal", str(tmp_path / "searcher-state.pkl")
    first = OptunaSearcher(SPACE, ONE, storage=path)
    done, flaky, stuck = (first.suggest(t) for t in ("done", "flaky", "stuck"))
    first.on_trial_complete("done", final(done))
    first.on_trial_result("flaky", {"step": 12, "best_val_acc": 0.3})
    first.on_trial_complete("flaky", error=True)
    first.on_trial_complete("stuck", error=True)
    first.save(state)

    resumed = OptunaSearcher(SPACE, ONE, storage=path)
    resumed.restore(state)
    resumed.on_trial_complete("stuck", error=True)  # failed again: stays one FAIL
    resumed.on_trial_complete("stuck")  # a rerun stopped before it ran: nothing to tell
    resumed.on_trial_result("flaky", {"step": 12, "best_val_acc": 0.9})  # reported before the failure: skipped
    resumed.on_trial_result("flaky", {"step": 24, "best_val_acc": 0.5})
    resumed.on_trial_complete("flaky", final(flaky))
    resumed.on_trial_complete("flaky", final(flaky))  # told once
    trials = journal(path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    rerun = trials[3]
    assert (rerun.params, rerun.value) == (trials[1].params, pytest.approx(score(flaky)))
    assert rerun.user_attrs == {"trial": "flaky", "retry_of": 1}
    assert rerun.intermediate_values == {12: 0.3, 24: 0.5}
    assert resumed._numbers["flaky"] == 3
    assert len(resumed.study.get_trials(states=(TrialState.COMPLETE,))) == 2


def test_a_rerun_takes_no_spread_startup_point():
    """The copy a rerun adds is not a new start-up trial: the next one gets the next spread point."""
    searcher = OptunaSearcher(SPACE, ONE, startup_trials=4, spread=True)
    flaky = searcher.suggest("flaky")
    searcher.on_trial_complete("flaky", error=True)
    searcher.on_trial_complete("flaky", final(flaky))  # run again (--retry-errored) to its end
    assert searcher.suggest("next")["lr"] == pytest.approx(10 ** (-4 + 2 * 3 / 8))  # point 2 of 4, not 3


def test_the_same_seed_suggests_the_same_trials():
    one, two, three = (OptunaSearcher(SPACE, ONE, seed=s, startup_trials=2) for s in (7, 7, 8))
    first = run(one, 6)
    assert run(two, 6) == first  # start-up and modelled trials alike
    assert run(three, 6) != first


def test_spread_startup_covers_each_range_evenly_then_the_model_takes_over(tmp_path):
    searcher = OptunaSearcher(SPACE, ONE, startup_trials=4, spread=True, storage=tmp_path / "optuna.journal")
    first = run(searcher, 2)
    state = tmp_path / "searcher.pkl"
    searcher.save(str(state))
    resumed = OptunaSearcher(SPACE, ONE, startup_trials=4, spread=True, storage=tmp_path / "optuna.journal")
    resumed.restore(str(state))  # a resumed search goes on with the start-up points it had not tried
    configs = first + run(resumed, 3, prefix="u")
    startup = configs[:4]
    # lr at log quantiles 1/8, 3/8, 5/8, 7/8 of 1e-4..1e-2, in order; m at the same quantiles of the
    # 13 values 4..16 (4 + floor(q * 13))
    assert [c["lr"] for c in startup] == pytest.approx([10 ** (-4 + 2 * q / 8) for q in (1, 3, 5, 7)])
    assert sorted(c["prefix_length"] for c in startup) == [5, 8, 12, 15]
    assert [c["prefix_length"] for c in startup] != [5, 8, 12, 15]  # shuffled, so m does not rise with lr
    assert len({c["wording"] for c in configs}) > 1  # choices are still the sampler's
    assert configs[4]["lr"] not in [c["lr"] for c in startup]  # TPE's own pick after the start-up
    random = run(OptunaSearcher(SPACE, ONE, startup_trials=4), 4)
    assert [c["lr"] for c in random] != [c["lr"] for c in startup]


@pytest.mark.parametrize("spread", [False, True])
def test_the_first_trials_try_each_searched_kind_and_head_once(spread):
    """Seed 0's random start-up draws linear four times running: a 4-trial search would never have
    tried the verbalizer. The first trials take each kind and each head in turn; the spread's numbers
    still apply."""
    heads, kinds = ("verbalizer", "linear", "word_linear"), ("sk_prefix", "sk_prompt")
    space = Space(wordings=SPACE.wordings, prefix_length=(4, 16), lr=(1e-4, 1e-2), kinds=kinds, heads=heads)
    configs = run(OptunaSearcher(space, ONE, seed=0, startup_trials=4, spread=spread), 5)
    assert [c["head"] for c in configs[:3]] == list(heads)
    assert [c["method"] for c in configs[:2]] == list(kinds)
    if spread:
        assert [c["lr"] for c in configs[:4]] == pytest.approx([10 ** (-4 + 2 * q / 8) for q in (1, 3, 5, 7)])


def test_conditional_parameters():
    space = Space(
        wordings=("a", "b"),
        prefix_length=(2, 8),
        lr=(1e-4, 1e-2),
        kinds=("sk_prompt", "lora", "linear_probe"),
        adapter_rank=(4, 64),
        heads=("linear", "verbalizer"),
    )
    searcher = OptunaSearcher(space, ONE, sampler="random")
    seen = {}
    for i in range(30):
        config = searcher.suggest(f"t{i}")
        seen[config["method"]] = set(config)
    assert seen == {
        "sk_prompt": {"method", "wording", "prefix_length", "adapter_rank", "head", "lr"},
        "lora": {"method", "adapter_rank", "head", "lr"},
        "linear_probe": {"method", "lr"},
    }
    assert space.grid()["adapter_rank"] == [4, 16, 64]


def test_grid_runs_to_its_end_in_seeded_order():
    space = Space(wordings=("a", "b"), prefix_length=(4, 5), lr=(1e-4, 1e-2))
    assert space.grid() == {"wording": ["a", "b"], "prefix_length": [4, 5], "lr": pytest.approx([1e-4, 1e-3, 1e-2])}
    searcher = OptunaSearcher(space, ONE, sampler="grid")
    configs = run(searcher, 12)  # the whole grid; Optuna's own sampler would raise from its last tell
    assert len({tuple(c.values()) for c in configs}) == 12
    assert run(OptunaSearcher(space, ONE, sampler="grid"), 12) == configs


def test_tune_metric_must_be_an_objective():
    from ray.tune.search import ConcurrencyLimiter

    searcher = OptunaSearcher(SPACE, TWO)
    assert searcher.set_search_properties("best_val_acc", "max", {"method": "sk_prefix"}) is False
    with pytest.raises(ValueError, match="not one of the objectives"):
        searcher.set_search_properties("trainable_params", "max", {})
    assert ConcurrencyLimiter(searcher, max_concurrent=2).metric == ["best_val_acc", "trainable_params"]


def _search(**keys) -> SearchConfig:
    return parse_config({"search": {**SEARCH, **keys}}).search


def test_objectives_config():
    assert _search().resolved_objectives("classification") == [("best_val_acc", "max")]
    assert _search().resolved_objectives("token_classification") == [("best_val_f1", "max")]
    listed = _search(objectives=["trainable_params", "best_val_acc", "samples_per_s"])
    assert listed.objectives == {"trainable_params": "min", "best_val_acc": "max", "samples_per_s": "max"}
    assert listed.resolved_objectives("classification")[0] == ("best_val_acc", "max")  # the selection metric first
    with pytest.raises(ConfigError, match=r"search.objectives: unknown 'test_acc'; .*trainable_params"):
        _search(objectives={"best_val_acc": "max", "test_acc": "max"})
    with pytest.raises(ConfigError, match="must include best_val_acc: max"):
        _search(objectives={"trainable_params": "min"}).resolved_objectives("classification")
    with pytest.raises(ConfigError, match="token_classification only"):
        _search(objectives=["best_val_acc", "best_val_recall"]).resolved_objectives("classification")


def test_sampler_startup_screen_and_grid_config():
    assert _search(sampler="nsga2", startup_trials=3, num_trials=4).startup == 3
    for keys, words in [
        ({"sampler": "random", "startup_trials": 2}, "has no start-up phase"),
        ({"startup_trials": 5}, "must not exceed search.num_trials (4)"),
        ({"screen": {"keep": 3}}, "must be below the number of wordings (3)"),
        ({"sampler": "grid", "num_trials": 28}, "exceeds the grid's 27 points (3 wordings x 3 prefix lengths"),
        ({"sampler": "grid", "num_trials": 10, "screen": {"keep": 1}}, "grid's 9 points"),
        ({"wordings": ["a", "a"]}, "lists 'a' twice"),
        ({"sampler": "random", "startup_points": "spread"}, "spread places tpe's and gp's start-up"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            _search(**keys)
    assert _search(sampler="grid", num_trials=27).sampler == "grid"


def test_wordings_file_joins_the_wordings(tmp_path):
    listed = tmp_path / "wordings.txt"
    listed.write_text("# candidates\n\n  Rate the review.  \nPositive or negative?\n")
    search = _search(wordings=["Liked it?"], wordings_file=str(listed))
    assert search.wordings == ["Liked it?", "Rate the review.", "Positive or negative?"]
    assert search.wordings_file is None  # read once: the trials (and experiment.json) get the sentences
    assert SearchConfig.model_validate(search.model_dump()) == search
    alone = parse_config(
        {"search": {k: v for k, v in SEARCH.items() if k != "wordings"} | {"wordings_file": str(listed)}}
    )
    assert len(alone.search.wordings) == 2
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    for path, words in [(tmp_path / "empty.txt", "holds no sentences"), (tmp_path / "none.txt", "no such file")]:
        with pytest.raises(ConfigError, match=words):
            _search(wordings_file=str(path))


def test_built_from_the_config(tmp_path):
    cfg = parse_config(
        {
            "name": "x",
            "method": {"kind": "sk_prompt"},
            "search": {**SEARCH, "num_trials": 8, "sampler": "gp", "objectives": ["trainable_params", "best_val_acc"]},
        }
    )
    run_dir = str(tmp_path / "x-tune-20261130-101500")
    searcher = OptunaSearcher.from_config(cfg, run_dir, wordings=["Liked it?"])
    assert searcher.suggest("t0")["wording"] == "Liked it?"  # what the screen kept
    assert searcher.metric == ["best_val_acc", "trainable_params"]
    assert isinstance(searcher.study.sampler, optuna.samplers.GPSampler)
    assert searcher.study.study_name == "x-tune-20261130-101500"
    assert study_path(run_dir) == f"{run_dir}/optuna.journal"
    assert (tmp_path / "x-tune-20261130-101500" / "optuna.journal").is_file()
    assert study_path("s3://bucket/runs/x-tune-1/").endswith("/.cache/skray/optuna/x-tune-1/optuna.journal")


def test_kinds_heads_and_rank_from_the_config_each_where_it_means_something(tmp_path):
    search = {**SEARCH, "kinds": ["sk_prefix", "lora"], "heads": ["linear", "verbalizer"]}
    cfg = parse_config({"name": "x", "search": {**search, "adapter_rank": {"low": 2, "high": 16}}})
    searcher = OptunaSearcher.from_config(cfg, str(tmp_path / "x-tune-1"))
    suggested = [searcher.suggest(f"t{i}") for i in range(12)]
    assert {s["method"] for s in suggested} == {"sk_prefix", "lora"}
    assert all(2 <= s["adapter_rank"] <= 16 and s["head"] in ("linear", "verbalizer") for s in suggested)
    assert all(("wording" in s) == (s["method"] == "sk_prefix") for s in suggested)  # LoRA reads no wording


def test_screen_correlation_reads_the_ranking_honestly(tmp_path):
    import pandas as pd

    from skray.screen import screen_correlation

    pd.DataFrame({"wording": ["a", "b", "c", "d"], "screen_acc": [0.9, 0.8, 0.7, 0.6]}).to_csv(
        tmp_path / "screen.csv", index=False
    )
    trials = pd.DataFrame({"wording": ["a", "a", "b", "c"], "best_val_acc": [0.5, 0.95, 0.9, 0.85]})
    line = screen_correlation(trials, str(tmp_path), "acc")
    assert line.startswith("screen: Spearman correlation 1.00 between 3 wordings'")  # a's best trial counts
    assert line.endswith("screening paid")
    trials["best_val_acc"] = [0.5, 0.6, 0.9, 0.95]
    assert screen_correlation(trials, str(tmp_path), "acc").endswith("screening did not clearly pay")
    assert screen_correlation(trials, str(tmp_path / "none"), "acc") is None


def test_a_search_chooses_the_head_where_the_config_names_none(tiny_llama_dir, tmp_path):
    """No head named (method.head, search.heads): tune searches verbalizer, linear and word_linear; a
    named head stays fixed, and so does a task or backbone where the word heads do not apply."""
    from skray.commands.tune import SEARCHED_HEADS, searched_heads

    raw = {
        "name": "heads",
        "storage_path": str(tmp_path),
        "backbone": {"name": tiny_llama_dir},
        "method": {"label_words": {"fresh": " good", "rotten": " bad"}},
        "search": {
            "num_trials": 3,
            "wordings": ["good or bad?"],
            "prefix_length": {"low": 2, "high": 4},
            "lr": {"low": 1e-4, "high": 1e-2},
        },
    }
    assert searched_heads(parse_config(raw)).search.heads == list(SEARCHED_HEADS)
    named = parse_config(raw | {"method": raw["method"] | {"head": "verbalizer"}})
    assert searched_heads(named).search.heads is None
    chosen = parse_config(raw | {"search": raw["search"] | {"heads": ["linear", "word_linear"]}})
    assert searched_heads(chosen).search.heads == ["linear", "word_linear"]
    encoder = parse_config(raw | {"backbone": {"name": "minilm-l6"}})
    assert searched_heads(encoder).search.heads is None
    probe = parse_config(raw | {"method": {"kind": "linear_probe", "head": "linear"}})
    assert searched_heads(probe).search.heads is None


def test_compare_tune_searches_the_head_of_each_method_that_names_none(tiny_llama_dir, tmp_path, capsys):
    """compare.tune's per-method searches follow tune's rule: an entry with no head (and none in the
    method section) searches it, an entry naming one keeps it, the probe has none to choose; the seeds
    then run the head its search chose. Its line says where the chosen lr lies at an end of its range."""
    from skray.commands.compare import method_search, tuned_entry
    from skray.commands.tune import SEARCHED_HEADS
    from skray.run import search_or_reuse

    raw = {
        "name": "heads",
        "storage_path": str(tmp_path),
        "backbone": {"name": tiny_llama_dir},
        "method": {"label_words": {"fresh": " good", "rotten": " bad"}},
        "compare": {"methods": ["sk_prefix"], "seeds": [0], "tune": {"trials": 3, "lr": {"low": 1e-4, "high": 1e-2}}},
    }
    cfg = parse_config(raw)
    run_dir = str(tmp_path / "heads-compare-20261203-000000")
    search = method_search(cfg, "sk_prefix", "sk_prefix", run_dir)
    assert search.search.heads == list(SEARCHED_HEADS)
    assert method_search(cfg, "x", {"kind": "sk_prefix", "head": "linear"}, run_dir).search.heads is None
    assert method_search(cfg, "linear_probe", "linear_probe", run_dir).search.heads is None
    named = parse_config(raw | {"method": raw["method"] | {"head": "verbalizer"}})
    assert method_search(named, "sk_prefix", "sk_prefix", run_dir).search.heads is None

    searched = Path(run_dir) / "tuning" / f"{search.name}-tune-20261203-000000"
    trial = searched / "run_trial_abc12345_1"
    trial.mkdir(parents=True)
    (searched / "experiment.json").write_text(json.dumps({"command": "tune", "config": search.model_dump()}))
    (searched / "finished").write_text("2026-12-03T00:00:00")
    params = {"method": "sk_prefix", "wording": cfg.method.wording, "prefix_length": 8, "lr": 0.002}
    (trial / "params.json").write_text(json.dumps(params | {"head": "word_linear"}))
    report = {"trial_id": "abc12345", "step": 4, "val_acc": 0.7, "best_val_acc": 0.7, "test_acc": 0.6, "done": True}
    (trial / "result.json").write_text(json.dumps(report) + "\n")
    chosen, _ = tuned_entry(cfg, "sk_prefix", "sk_prefix", run_dir, search_or_reuse)  # read back, not run
    assert chosen == {"kind": "sk_prefix", "lr": 0.002, "head": "word_linear"}
    assert "lr 0.002 (searched 0.0001-0.01), head word_linear;" in capsys.readouterr().out
    (trial / "params.json").write_text(json.dumps(params | {"lr": 0.0095, "head": "word_linear"}))
    tuned_entry(cfg, "sk_prefix", "sk_prefix", run_dir, search_or_reuse)
    assert "lr 0.0095 (searched 0.0001-0.01, at the top of its range), head" in capsys.readouterr().out


def test_a_best_trial_near_an_end_of_its_range_is_named_on_the_scale_it_was_sampled_on():
    """A search cannot see past its range: where the best trial sits at an end, the run says so (the
    powered RT verdict's best SK-Prefix chose lr 0.00943 of 3e-4 - 1e-2, its best prompt tuning 0.0113
    of 1e-2 - 1e-1). lr and the rank are judged on their log scale, the prefix length on its own."""
    import pandas as pd

    from skray.commands.tune import edge_lines
    from skray.config import load_config

    space = Space(wordings=("w",), prefix_length=(4, 16), lr=(3e-4, 1e-2), adapter_rank=(2, 64))
    assert space.at_edges({"lr": 0.00943, "prefix_length": 16, "adapter_rank": 8}) == [
        ("lr", "top", (3e-4, 1e-2)),
        ("prefix_length", "top", (4, 16)),
    ]
    assert space.at_edges({"lr": 0.0003, "prefix_length": 5, "adapter_rank": 2}) == [
        ("lr", "bottom", (3e-4, 1e-2)),
        ("prefix_length", "bottom", (4, 16)),
        ("adapter_rank", "bottom", (2, 64)),
    ]
    # the log middle of lr (0.0017) and a rank of 11 (log middle 11.3) are not ends; a kind without m is skipped
    assert space.at_edges({"lr": 0.0017, "prefix_length": float("nan"), "adapter_rank": 11}) == []
    assert space.at_edges({"lr": 0.0017, "prefix_length": None}) == []

    cfg = load_config("experiments/quickstart.yaml")  # lr 3e-4 - 1e-2, m 4 - 16
    trials = pd.DataFrame(
        {
            "trial": ["a", "b", "c"],
            "status": ["completed", "completed", "early_stopped"],
            "best_val_acc": [0.80, 0.86, 0.90],  # c scored highest, but ASHA stopped it: not the best
            "lr": [0.0099, 0.00943, 0.0003],
            "prefix_length": [10, 9, 4],
        }
    )
    assert edge_lines(trials, cfg) == [
        "the best trial's lr (0.00943) is near the top of the range searched (0.0003 - 0.01): "
        "the best setting may lie beyond it"
    ]
    assert edge_lines(trials.assign(lr=[0.0099, 0.0017, 0.0003]), cfg) == []
    assert edge_lines(trials.assign(status="failed"), cfg) == []
