"""The SK-Tuning recipe a solo trial's Ray Train workers run (a packed slot's: ``skray.train.packed``).

``setup`` loads the data, settles the precision (``auto``: by the GPUs' compute capability), loads
the frozen backbone, builds the method's model (for SK methods the semantic prompt runs through the
backbone once), settles the ZeRO stage (``auto``: the first that fits, from a memory estimate) and
wraps the model in a DeepSpeed engine (a restart: with the settings its checkpoint records). ``train``
runs the steps; ``evaluate_and_report`` scores, keeps the best state, checkpoints and reports. Every
rank joins each evaluation and each report, so ZeRO-3's collectives stay in step.

Each report carries a checkpoint that every rank writes its part of (Ray Train gathers them in
one directory): DeepSpeed's state of what trains (frozen weights excluded), optimizer and schedule
included, the ``RunState``, and the best trainable state so far as safetensors; the final one also
the test rows' predictions (``test_predictions.csv``, for compare's paired tests). A worker group that
Ray Train restarts after a failure resumes from it: same step, optimizer and data position.

"Best" is ``train.select_by`` on validation (``skray.config.selection_metric``). With
``method.calibrate`` (on by default for word_linear) the head's bias is calibrated on a
content-free row once the model is built.

Metric names are the results table's (``skray.results.COLUMNS``): written once, here.

Most imports sit inside the methods: Ray unpickles this module in a fresh worker before ``setup``
names the worker's DeepSpeed accelerator (``setup_env``), and DeepSpeed fixes its accelerator when
first imported.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator

import torch

from skray.config import ExperimentConfig, TrainConfig, offloads_params, selection_metric
from skray.train.checkpoint import RunState


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point: ``{"experiment": ExperimentConfig dump, "cpus_per_worker": float,
    "log": a path prefix for this worker's output file, or None}``."""
    import ray.train

    from skray.console import output_to

    log = config.get("log")
    with output_to(f"{log}-rank{ray.train.get_context().get_world_rank()}.log" if log else None):
        recipe = SKTuningRecipe(ExperimentConfig.model_validate(config["experiment"]), config.get("cpus_per_worker", 1))
        recipe.setup()
        recipe.train()


def setup_env(use_gpu: bool) -> None:
    """DeepSpeed picks its accelerator at import: each worker names its own device's, whatever it
    inherited (a driver or test process may carry DS_ACCELERATOR=cpu into Ray's workers). Its ops build
    in skray's cache (``skray.train.op_builds``)."""
    os.environ["DS_ACCELERATOR"] = "cuda" if use_gpu else "cpu"
    from skray.backbones import cache_dir
    from skray.train.op_builds import prepare_op_builds

    prepare_op_builds(cache_dir())


SETTLED = ("zero_stage", "offload", "precision")  # what a run settles before building its engine (RunState keeps it)


def worker_device(use_gpu: bool) -> torch.device:
    """This worker's device: the GPU Ray Train assigned it, as Ray names it (the local rank is the wrong
    index where Ray does not share CUDA_VISIBLE_DEVICES among a node's workers, or where a node has more
    than 10 GPUs: Ray sorts their ids as strings)."""
    if not use_gpu:
        return torch.device("cpu")
    import ray.train.torch

    return ray.train.torch.get_device()


def restored_train(train: TrainConfig, prior: RunState | None) -> TrainConfig:
    """A restart builds the engine its checkpoint was written with: the ZeRO stage, offload and
    precision the run settled (``auto`` decided again could choose otherwise), where its state has them."""
    kept = {k: getattr(prior, k) for k in SETTLED if prior is not None and getattr(prior, k) is not None}
    return train.model_copy(update=kept)


def settle_precision(train: TrainConfig, device: torch.device, log: bool) -> TrainConfig:
    """``precision: auto`` decided where the GPUs are seen: bf16 when every worker's GPU has compute
    capability 8.0 or more, else fp32 (older GPUs report bf16 support too, and emulate it slowly); fp32
    on CPUs. Rank 0 (``log``) says which in one line. A collective on GPUs: every rank decides alike."""
    if train.precision != "auto":
        return train
    precision = "fp32"
    if train.use_gpu:
        import torch.distributed as dist

        from skray.train.evaluate import all_reduce

        major, minor = torch.cuda.get_device_capability(device)
        (lowest,) = all_reduce([float(major * 10 + minor)], op=dist.ReduceOp.MIN)
        precision = "bf16" if lowest >= 80 else "fp32"
        if log:
            seen = f"the workers' GPUs have compute capability {int(lowest) // 10}.{int(lowest) % 10}"
            why = "" if precision == "bf16" else " (bf16 needs 8.0; train.precision fp16 trains in half precision)"
            print(f"precision auto: {precision}: {seen}{why}", flush=True)
    return train.model_copy(update={"precision": precision})


def zero3_loading_config(cfg: ExperimentConfig) -> dict | None:
    """DeepSpeed's config for building the backbone partitioned (ZeRO 3; None below it). With parameters
    offloaded to NVMe, every weight passes through the swapper's buffers as it loads, so they are sized
    for the largest weight's partition there already (DeepSpeed's default holds 1e8 elements)."""
    from skray.backbones import inspect_backbone, largest_parameter
    from skray.train.deepspeed import deepspeed_config

    t = cfg.train
    if t.zero_stage != 3:
        return None
    nvme = t.offload_device == "nvme" and offloads_params(t.offload)
    largest = largest_parameter(inspect_backbone(cfg.backbone), cfg.backbone.trust_remote_code) if nvme else 0
    return deepspeed_config(t, trainable_params=0, largest_param=largest)


class SKTuningRecipe:
    """One worker's run: ``setup()``, then ``train()``, which calls ``evaluate_and_report`` every
    ``train.eval_every`` steps. ``state`` is what a resume restores."""

    def __init__(self, cfg: ExperimentConfig, cpus_per_worker: float = 1):
        self.cfg = cfg
        self.cpus_per_worker = cpus_per_worker
        self.started = time.perf_counter()
        self.state = RunState()
        self.best: dict[str, torch.Tensor] | None = None  # the best trainable weights so far
        self.restored = False
        self.losses: list[float] = []
        self.predictions: dict[str, torch.Tensor] = {}  # the final test's per-row predictions (rank 0 saves them)

    def setup(self) -> None:
        """Data, precision, frozen backbone, method, ZeRO setting and DeepSpeed engine; a restarted group
        builds with the precision and ZeRO setting its last checkpoint was written with, then restores it."""
        cfg = self.cfg
        setup_env(cfg.train.use_gpu)
        import deepspeed
        import ray.train

        from skray.backbones import load_backbone
        from skray.data import load_splits
        from skray.data.collate import take
        from skray.devices import place
        from skray.methods import build_model
        from skray.partitioned import ParamPeak, dtype_of
        from skray.train.checkpoint import read_resume_state, read_run_state
        from skray.train.deepspeed import build_engine, held_param_bytes, process_group_backend
        from skray.train.memory import runtime_bytes, settle_zero
        from skray.train.rows import check_train_rows, encode_task

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(max(1, int(self.cpus_per_worker)))
        torch.manual_seed(cfg.train.seed)
        self.device = worker_device(cfg.train.use_gpu)
        self.key = selection_metric(cfg.data.task, cfg.train.select_by)

        splits = load_splits(cfg.data)
        check_train_rows(cfg, len(splits["train"]), self.world)
        self.label_names = splits.label_names
        runtime = runtime_bytes(self.device)  # before the backbone: what the estimate adds to the model
        # The group first: at ZeRO 3 the backbone is built partitioned over it (zero.Init), on this
        # rank's own device, so no rank ever holds it whole; weights load in the run's precision.
        deepspeed.init_distributed(dist_backend=process_group_backend(cfg.train.use_gpu))  # Ray Train's group
        if cfg.train.use_gpu:
            torch.cuda.set_device(self.device)
        checkpoint = ray.train.get_checkpoint()
        train = restored_train(cfg.train, read_run_state(checkpoint) if checkpoint else None)
        cfg = self.cfg = cfg.model_copy(update={"train": settle_precision(train, self.device, log=self.rank == 0)})
        backbone = load_backbone(cfg.backbone, dtype_of(cfg.train.precision), zero3_loading_config(cfg))
        self.param_peak = ParamPeak(backbone.model)  # parameter bytes held from load time on
        self.facts = {"backbone_params": backbone.num_parameters, "backbone_bytes": backbone.byte_size}
        token_level = cfg.data.task == "token_classification"
        model = build_model(backbone, cfg.method, self.label_names, token_level)
        # Adapter, head and prompt cache in the backbone's dtype: DeepSpeed keeps fp32 masters of what trains.
        self.model = place(model, self.device, dtype_of(cfg.train.precision), frozen=backbone.model)
        rows = encode_task(cfg, splits, backbone)
        self.data, self.class_weight = rows.data, rows.class_weight
        self.facts.update(rows.facts)
        if cfg.method.calibrated:  # before any checkpoint is read: a restart's bias comes from its state
            from skray.methods.base import content_free_input

            free = content_free_input(backbone.tokenizer, cfg.data, not backbone.is_decoder)
            self.model.calibrate(free["input_ids"], free["attention_mask"])

        rows_of_one_batch = torch.arange(cfg.train.micro_batch_size) % len(self.data["train"]["labels"])
        first = {k: v.to(self.device) for k, v in take(self.data["train"], rows_of_one_batch).items()}
        self.t, est = settle_zero(
            self.model,
            cfg.train,
            world=self.world,
            local_world=ctx.get_local_world_size(),
            device=self.device,
            batch=first,
            runtime_bytes=runtime,
            log=self.rank == 0,
        )
        self.facts.update(
            trainable_params=self.model.num_trainable(),  # counted before ZeRO-3 partitions the parameters
            prompt_tokens=self.model.prompt_tokens,
            world_size=self.world,
            zero_stage=self.t.zero_stage,
            offload=self.t.offload,
            precision=self.t.precision,
            micro_batch_size=self.t.micro_batch_size,
            lr=self.t.lr,
            est_mem_mb=est.worker_bytes(self.t.use_gpu) / 2**20,
        )
        self.state.zero_stage, self.state.offload, self.state.precision = (getattr(self.t, k) for k in SETTLED)
        self.engine = build_engine(self.model, self.t)
        self.facts["param_bytes_per_worker"] = held_param_bytes(self.engine)

        if checkpoint:
            with checkpoint.as_directory() as directory:
                self.state, self.best = read_resume_state(self.engine, directory)
            self.state.resumed_from = self.state.step
            self.restored = True

    def train(self) -> None:
        """Steps from where the state says to ``train.max_steps``. Step 0 (zero-shot) is evaluated by a
        fresh run only; a restored run sends again the reports its checkpoint kept (``_replay``), then
        goes on, if any steps are left."""
        from skray.train.batches import train_batches

        t, state = self.t, self.state
        if self.restored:
            self._replay()
        else:
            self.evaluate_and_report(0)
        rows = len(self.data["train"]["labels"])
        batches = train_batches(rows, t.micro_batch_size, self.rank, self.world, t.seed, skip=state.step * t.grad_accum)
        for step in range(state.step + 1, t.max_steps + 1):
            start = time.perf_counter()
            tokens = self._step(batches)
            took = time.perf_counter() - start
            state.train_s += took
            state.train_tokens += tokens
            if step > state.resumed_from + t.untimed_steps:  # steady state: allocations and caches warmed up
                state.steady_s += took
                state.steady_steps += 1
                state.steady_tokens += tokens
            if state.time_to_first_step_s is None:
                state.time_to_first_step_s = time.perf_counter() - self.started - state.eval_s
                self.param_peak.detach()  # load, prompt pass, engine, step 0 and a step seen: stop sampling
            if step % t.eval_every == 0 or step == t.max_steps:
                self.evaluate_and_report(step, final=step == t.max_steps)

    def _replay(self) -> None:
        """Send again, in order, every report the restored checkpoint kept, marked ``REPLAYED``.

        Ray Train's controller registers a checkpoint before Tune's callback queues its report, and the
        driver logs the report later still: a driver killed in between loses reports that the trial
        then resumes past, its final one too (a finished trial came back with nothing left to report
        and Tune ended it on a stale result). What the driver did log is dropped on the way
        (``skray.search.ReplayFilter``) and by the receivers. No checkpoint: the restored one is
        registered already; its weights' size is the ``checkpoint_bytes`` each kept report lacks."""
        import ray.train

        from skray.train.checkpoint import REPLAYED, weights_bytes

        size = weights_bytes(ray.train.get_checkpoint())
        for report in self.state.reports:
            ray.train.report(report | {"checkpoint_bytes": size, REPLAYED: True})

    def _step(self, batches: Iterator[torch.Tensor]) -> int:
        """One optimizer step (``grad_accum`` micro-batches); returns the tokens it read."""
        from skray.data.collate import take
        from skray.train.evaluate import task_loss

        tokens = 0
        for _ in range(self.t.grad_accum):
            batch = {k: v.to(self.device) for k, v in take(self.data["train"], next(batches)).items()}
            loss = task_loss(
                self.engine(batch["input_ids"], batch["attention_mask"]), batch["labels"], weight=self.class_weight
            )
            self.engine.backward(loss)
            self.engine.step()
            self.losses.append(loss.item())
            tokens += int(batch["attention_mask"].sum())
        return tokens

    def evaluate_and_report(self, step: int, final: bool = False) -> None:
        """Evaluate, keep the best state, checkpoint, report; the final report adds the best state's
        test scores."""
        from skray.train.deepspeed import gather_trainable, load_trainable

        state = self.state
        val = self._evaluate("validation")
        if step == 0:  # the step-0 model on validation and, once, on test: gains read on one split
            state.zero_shot = val
            state.zero_shot_test = self._evaluate("test")
        if val[self.key] > state.best_score:
            state.best_score, state.best_val, state.best_step = val[self.key], val, step
            self.best = gather_trainable(self.engine)
        extra = {}
        if final:
            load_trainable(self.engine, self.best)
            test = self._evaluate("test", self.predictions)
            extra = {f"test_{k}": v for k, v in test.items() if k != "loss"} | {"done": True}
        metrics = self._metrics(step, val) | extra
        state.step = step
        self._checkpoint_and_report(metrics)

    def _evaluate(self, split: str, predictions: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        from skray.train.evaluate import evaluate

        start = time.perf_counter()
        scores = evaluate(
            self.engine,
            self.data[split],
            batch_size=self.t.eval_batch_size,
            rank=self.rank,
            world=self.world,
            device=self.device,
            label_names=self.label_names,
            predictions=predictions,
        )
        self.state.eval_s += time.perf_counter() - start
        return scores

    def _metrics(self, step: int, val: dict[str, float]) -> dict:
        """A report in the table's vocabulary: what was run, how well, at what cost (summed over ranks)."""
        import torch.distributed as dist

        from skray.train.checkpoint import report_of
        from skray.train.evaluate import all_reduce
        from skray.train.memory import peak_memory_mb

        state, t = self.state, self.t
        mean_loss = sum(self.losses) / max(1, len(self.losses))
        train_loss, tokens, steady_tokens = all_reduce(
            [mean_loss, float(state.train_tokens), float(state.steady_tokens)]
        )
        peak, param_peak = all_reduce(
            [peak_memory_mb(self.device), float(self.param_peak.sample())], op=dist.ReduceOp.MAX
        )
        self.losses.clear()
        per_step = t.micro_batch_size * t.grad_accum * self.world
        steady = state.steady_s
        return {
            **self.facts,
            **report_of(state, step, val, train_loss / self.world, tokens, per_step),
            "steady_samples_per_s": state.steady_steps * per_step / steady if steady else float("nan"),
            "steady_tokens_per_s": steady_tokens / steady if steady else float("nan"),
            "peak_mem_mb": peak,
            "peak_param_bytes_per_worker": param_peak,
            "prompt_passes": self.model.prompt_passes,
        }

    def _checkpoint_and_report(self, metrics: dict) -> None:
        """Every rank writes its part of the checkpoint; rank 0 adds the best weights and their meta."""
        import ray.train

        from skray.train.checkpoint import checkpoint_meta, write_resume_state

        state = self.state
        meta = checkpoint_meta(self.cfg, self.label_names, self.t.precision, state, self.key)
        with tempfile.TemporaryDirectory(prefix="skray-ckpt-") as directory:
            state.reports.append(dict(metrics))  # the checkpoint keeps its own report too (``_replay``)
            size = write_resume_state(self.engine, directory, state, self.best if self.rank == 0 else None, meta)
            if self.rank == 0 and "pred" in self.predictions:  # the final test's rows, for paired tests
                from skray.train.evaluate import save_predictions

                save_predictions(directory, self.data["test"]["labels"], self.predictions["pred"])
            if self.rank == 0:
                state.checkpoint_bytes = size
            metrics["checkpoint_bytes"] = state.checkpoint_bytes
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
