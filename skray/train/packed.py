"""A packed slot: one Ray Train worker group, one frozen backbone, several search members trained at once.

A slot is one Tune trial. Its rank 0 asks the run's broker (``skray.broker``, an actor the driver
holds: Optuna's ask/tell and ASHA per member) for configurations and tells it each member's reports;
every rank hears the answers (``_agree``), so all build, step and drop the same members. When a
member finishes, ASHA stops it, or it fails, the next configuration takes its seat, without a
restart, until the broker has no more: the backbone loads once per slot, not once per configuration.

A member trains as it would alone (``skray.train.recipe``): its own rows (``micro_batch_size`` per
worker), data order and seed; its own AdamW, learning-rate schedule counted in its own steps, and
gradient clipping at norm 1 (DeepSpeed's ``gradient_clipping``); its loss a mean over its own rows;
its gradients averaged over the workers as DeepSpeed averages them. Only the backbone pass is shared
(``skray.methods.packed``). The backbone is frozen, so ZeRO 1-2 would partition nothing but the
members' optimizer state (kilobytes to megabytes): at ZeRO 0-2 a slot holds the backbone whole on each
worker, as they do. At ZeRO 3 it is built partitioned over the workers once for the slot, as a solo
trial builds it (``zero.Init``), inside a DeepSpeed engine with no optimizer whose hooks gather each
module's weights for its forward and backward (and, with ``train.offload`` of the parameters, keep the
partitions in CPU memory or on NVMe); the members train outside it, as at the other stages.

Each member writes what a solo trial writes, in ``RUN_DIR/train_<member>/``: ``params.json``,
``result.json`` (its reports, the table's columns) and ``checkpoint_000000/`` (its best weights and
their meta), so ``skray report``, ``predict`` and ``export`` read it as they read a solo trial.
While a member runs, ``resume.pt`` beside them holds its state at its last report (weights, optimizer,
schedule, counters, best weights): a slot restarted after a fault, or a resumed run's, takes the member
up from there, with the data its straight run would see next, as a solo trial goes on from its
checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from skray import storage
from skray.config import ExperimentConfig, selection_metric
from skray.train.checkpoint import RunState

MEMBER_DIR = "train_{member}"  # what skray.predict.find_checkpoint looks for: a solo trial's Train folder
CHECKPOINT = "checkpoint_000000"
RESUME = "resume.pt"  # a running member's state at its last report; gone once it ends


def packed_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point for a slot: ``{"experiment": the run's ExperimentConfig dump,
    "cpus_per_worker", "log", "broker": the broker actor's name, "slot": this slot's number, "pack": seats,
    "auto": whether the slot keeps fewer seats where more save no step time (``search.pack: auto``),
    "run_dir": where members write}``."""
    import ray
    import ray.train

    from skray.console import output_to

    log = config.get("log")
    with output_to(f"{log}-rank{ray.train.get_context().get_world_rank()}.log" if log else None):
        slot = PackedSlot(
            ExperimentConfig.model_validate(config["experiment"]),
            config["cpus_per_worker"],
            ray.get_actor(config["broker"], namespace="skray"),
            config["slot"],
            config["pack"],
            config["run_dir"],
            config.get("auto", False),
        )
        slot.setup()
        slot.run()


@dataclass
class Member:
    """One configuration in a seat: its model, optimizer, schedule, rows and run state."""

    id: str
    cfg: ExperimentConfig
    model: Any
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    batches: Any
    directory: str
    started: float
    state: RunState = field(default_factory=RunState)
    best: dict[str, torch.Tensor] | None = None
    # its step-0 weights and their ``step0_key``, kept until its end: the step-0 test score is computed
    # only for a member that gets tested (``PackedSlot._zero_shot_test``)
    step0: dict[str, torch.Tensor] | None = None
    step0_key: str = ""
    step_bytes: int = 0  # what a step of it adds to a worker's peak memory (``PackedSlot._step_bytes``)
    losses: list[float] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return selection_metric(self.cfg.data.task, self.cfg.train.select_by)


class PackedSlot:
    """One worker's part of a slot: ``setup()`` (data, backbone), then ``run()`` (members until none is left)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        cpus_per_worker: float,
        broker: Any,
        slot: int,
        pack: int,
        run_dir: str,
        auto: bool = False,
    ):
        self.cfg = cfg
        self.cpus_per_worker = cpus_per_worker
        self.broker = broker
        self.slot = slot
        self.pack = pack  # the most seats: the run's, or with ``auto`` what the measured step time pays for
        self.auto = auto
        self.run_dir = run_dir
        self.started = time.perf_counter()
        self.seats: list[Member] = []
        self.waiting: list[Member] = []  # built, but beyond what memory holds at once: seated as seats free
        self.said_memory = False  # the line saying memory holds fewer than ``pack`` went out
        self.members = 0  # members this slot took
        self.step0_val: dict[str, dict] = {}  # step-0 model (``step0_key``) -> its validation scores
        self.step0_test: dict[str, dict] = {}  # -> its test scores, once a member of it ends tested
        self.timing = {"setup_s": 0.0, "seats_s": 0.0, "steps_s": 0.0, "eval_s": 0.0, "write_s": 0.0}

    def setup(self) -> None:
        """The data and the frozen backbone, once for every member this slot will train."""
        import ray.train
        import torch.distributed as dist

        from skray.backbones import load_backbone
        from skray.data import load_splits
        from skray.partitioned import dtype_of
        from skray.train.deepspeed import held_param_bytes, hold_frozen, process_group_backend
        from skray.train.recipe import settle_precision, setup_env, worker_device, zero3_loading_config
        from skray.train.rows import check_train_rows, encode_task

        cfg = self.cfg
        setup_env(cfg.train.use_gpu)
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(max(1, int(self.cpus_per_worker)))
        self.device = worker_device(cfg.train.use_gpu)
        if cfg.train.use_gpu:
            torch.cuda.set_device(self.device)
        assert dist.is_initialized(), "Ray Train sets up the process group"
        self.cfg = cfg = cfg.model_copy(update={"train": settle_precision(cfg.train, self.device, self.rank == 0)})
        splits = load_splits(cfg.data)
        check_train_rows(cfg, len(splits["train"]), self.world)
        self.label_names = splits.label_names
        zero3 = zero3_loading_config(cfg)
        if zero3 is not None:  # built partitioned over Ray Train's group, as a solo trial's is
            import deepspeed

            deepspeed.init_distributed(dist_backend=process_group_backend(cfg.train.use_gpu))
        self.backbone = load_backbone(cfg.backbone, dtype_of(cfg.train.precision), zero3)
        if zero3 is None:
            self.backbone.model.to(self.device)
            held = sum(p.numel() * p.element_size() for p in self.backbone.model.parameters())
        else:
            self.engine = hold_frozen(self.backbone.model, cfg.train)  # kept while the slot runs: its hooks
            held = held_param_bytes(self.engine)
        rows = encode_task(cfg, splits, self.backbone)
        self.data, self.class_weight = rows.data, rows.class_weight
        self.facts = {
            "backbone_params": self.backbone.num_parameters,
            "backbone_bytes": self.backbone.byte_size,
            **rows.facts,
            "world_size": self.world,
            "zero_stage": 3 if zero3 is not None else 0,  # below 3 nothing of the backbone is partitioned
            "offload": cfg.train.offload if zero3 is not None else "none",
            "precision": cfg.train.precision,
            "param_bytes_per_worker": held,
            "slot": self.slot,
        }
        self.held, self.budget = self._memory(ctx.get_local_world_size())
        self.timing["setup_s"] = time.perf_counter() - self.started

    # -- the slot's loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Fill the seats (first with the members a failed worker group was training: they go on from
        their last reports), step every member, evaluate those due, replace those that ended; until the
        broker has no configuration left and every seat is empty."""
        import ray

        self._build(self._agree(ray.get(self.broker.rejoin.remote(self.slot)) if self.rank == 0 else None))
        if self.auto:
            self._choose_seats()
        self._fill()
        while self.seats:
            start = time.perf_counter()
            self._step()
            took = time.perf_counter() - start
            self.timing["steps_s"] += took
            due = []
            for member in self.seats:
                member.state.step += 1
                member.state.train_s += took / len(self.seats)  # its share of the shared step
                if member.state.time_to_first_step_s is None:  # from its build, its evaluations left out
                    member.state.time_to_first_step_s = time.perf_counter() - member.started - member.state.eval_s
                t = member.cfg.train
                if member.state.step % t.eval_every == 0 or member.state.step == t.max_steps:
                    due.append(member)
            if due:
                self._evaluate_and_report(due)
                self._fill()
        import ray.train

        timing = {k: round(v, 2) for k, v in self.timing.items()}
        if self.rank == 0:
            print(f"skray: slot {self.slot} timing: {json.dumps(timing)} ({self.pack} seats)", flush=True)
        ray.train.report({"done": True, "members": self.members, "seats": self.pack, **timing})

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Members' passes in the run's precision: their weights are fp32 masters (a solo trial's are
        DeepSpeed's), cast per operation to the backbone's bf16 or fp16 as a solo trial's are held."""
        from skray.partitioned import dtype_of

        dtype = dtype_of(self.cfg.train.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def _agree(self, value: Any) -> Any:
        """Rank 0's value on every rank (the broker's answers: all ranks must act alike)."""
        import torch.distributed as dist

        box = [value if self.rank == 0 else None]
        if self.world > 1:
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def _memory(self, local_world: int) -> tuple[int, int]:
        """What a worker holds before any member, and what it may use in all (``train.memory_per_worker_gb``
        where set): the most held and the least budget of any rank, so that every rank seats alike."""
        import torch.distributed as dist

        from skray.train.evaluate import all_reduce
        from skray.train.memory import held_bytes, worker_budget_bytes

        budget = float(worker_budget_bytes(self.cfg.train.use_gpu, local_world, self.device))
        if self.cfg.train.memory_per_worker_gb is not None:
            budget = min(budget, self.cfg.train.memory_per_worker_gb * 2**30)
        (held,) = all_reduce([float(held_bytes(self.device))], op=dist.ReduceOp.MAX)
        (budget,) = all_reduce([budget], op=dist.ReduceOp.MIN)
        return int(held), int(budget)

    def _fill(self) -> None:
        """Seat members until the seats are full, memory holds no more, or the broker has none left:
        first the ones waiting, then new ones from the broker, built and measured as they come. The
        newly seated members' step-0 evaluation (validation and test) runs packed."""
        while True:
            offers = []
            while len(self.seats) + len(self.waiting) + len(offers) < self.pack:
                offer = self._ask()
                if offer is None:
                    break
                offers.append(offer)
            self._build(offers)
            seated = self._admit()
            if not offers or (not seated and self.waiting):  # the broker has no more, or seats or memory are full
                return  # (offers that all failed to build leave room: ask again)

    def _ask(self) -> tuple | None:
        """The broker's next configuration for this slot, on every rank (None: it has none left)."""
        import ray

        return self._agree(ray.get(self.broker.ask.remote(self.slot)) if self.rank == 0 else None)

    def _choose_seats(self) -> None:
        """``pack: auto``: the seats this slot keeps (``skray.train.step_curve``), timed on its first
        member before any trains: a training pass of 1, 2, 4, ... copies of it on one micro batch, up to
        what the run gave the slot and the worker's memory holds. One line says what was measured."""
        import torch.distributed as dist

        from skray.methods.packed import packed_forward
        from skray.train.evaluate import all_reduce, task_loss
        from skray.train.memory import release_freed_heap, seats_that_fit
        from skray.train.step_curve import fastest_seconds, grow, seats_line

        while not self.waiting:  # a member that fails to build is ended; the next one is asked for
            offer = self._ask()
            if offer is None:
                return
            self._build([offer])
        start, first = time.perf_counter(), self.waiting[0]
        memory = seats_that_fit(self.held, [first.step_bytes] * self.pack, self.budget, self.device.type == "cuda")
        batch = self._micro_batch(first)

        def one_pass(n: int) -> None:
            with self._autocast():
                logits = packed_forward(
                    self.backbone.model, [first.model] * n, [(batch["input_ids"], batch["attention_mask"])] * n
                )
                loss = sum(task_loss(out, batch["labels"], weight=self.class_weight) for out in logits)
            loss.backward()

        def pass_seconds(n: int) -> float:
            (took,) = all_reduce([fastest_seconds(lambda: one_pass(n), self.device)], op=dist.ReduceOp.MAX)
            return took

        one_pass(1)  # untimed: the first pass pays for allocations and kernels' first use
        given = self.pack  # no random draws in these passes: packable members and a frozen backbone have no dropout
        self.pack, curve = grow(min(given, memory), pass_seconds)  # every rank alike: the times are reduced
        first.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cpu":
            release_freed_heap()  # what the passes freed, or every later pass runs slower (``release_freed_heap``)
        self.timing["seats_s"] = time.perf_counter() - start
        if self.rank == 0:
            print(f"skray: slot {self.slot}: pack auto: {seats_line(self.pack, curve, given, memory)}", flush=True)

    def _build(self, offers: list[tuple]) -> None:
        """Build the members offered (one the method refuses fails alone, e.g. m != k for adapter
        linear), measure what a step of each adds to a worker's peak memory, and queue them."""
        for member_id, params, experiment in offers:
            try:
                member = self._member(member_id, params, ExperimentConfig.model_validate(experiment))
            except Exception as err:
                self._end(member_id, None, f"{type(err).__name__}: {err}")
                continue
            member.step_bytes = self._step_bytes(member)
            self.waiting.append(member)
            self.members += 1

    def _step_bytes(self, member: Member) -> int:
        """What one micro batch of this member's training pass adds to a worker's memory (the most of any
        rank): on a GPU the peak it raises; on a CPU what autograd keeps for backward, since the
        allocator reuses what an earlier member's pass freed and the resident peak would not move."""
        import torch.distributed as dist

        from skray.train.evaluate import all_reduce
        from skray.train.memory import measure_activation_bytes, measure_step_peak_bytes

        batch = self._micro_batch(member)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with self._autocast():
            measured = measure_step_peak_bytes(member.model, ids, mask) if self.device.type == "cuda" else None
            if measured is None:
                measured = measure_activation_bytes(member.model, ids, mask)
        (measured,) = all_reduce([float(measured)], op=dist.ReduceOp.MAX)
        return int(measured)

    def _micro_batch(self, member: Member) -> dict[str, torch.Tensor]:
        """The first ``micro_batch_size`` training rows, on this worker's device: what a step of the
        member is measured on (its memory, the seats' step time)."""
        from skray.data.collate import take

        rows = torch.arange(member.cfg.train.micro_batch_size) % len(self.data["train"]["labels"])
        return {k: v.to(self.device) for k, v in take(self.data["train"], rows).items()}

    def _admit(self) -> list[Member]:
        """Seat the waiting members that the seats and memory hold beside the seated ones
        (``seats_that_fit``), in order, and run their step-0 evaluation; returns them. A member taken up
        from its resume.pt has had its step 0."""
        from skray.train.memory import seats_that_fit

        costs = [m.step_bytes for m in self.seats + self.waiting]
        fit = seats_that_fit(self.held, costs, self.budget, self.device.type == "cuda") - len(self.seats)
        if fit < min(len(self.waiting), self.pack - len(self.seats)) and self.rank == 0 and not self.said_memory:
            self.said_memory = True
            print(
                f"skray: slot {self.slot}: memory holds {len(self.seats) + max(fit, 0)} members at once, not "
                f"{self.pack} (a step of each adds about {max(costs) / 2**30:.2f} GiB to the "
                f"{self.held / 2**30:.2f} GiB a worker holds, of {self.budget / 2**30:.2f} GiB); the others wait "
                f"for a seat",
                flush=True,
            )
        fit = max(0, min(fit, self.pack - len(self.seats)))  # a restarted slot may rejoin more than it seats
        seated, self.waiting = self.waiting[:fit], self.waiting[fit:]
        fresh = [m for m in seated if not m.state.zero_shot]  # the others go on from their resume.pt
        if fresh:
            self._zero_shot(fresh)
        self.seats.extend(seated)
        return seated

    def _member(self, member_id: str, params: dict[str, Any], cfg: ExperimentConfig) -> Member:
        """A member built as a solo trial builds its model (seeded alike) on this slot's backbone."""
        from skray.devices import place
        from skray.methods import build_model
        from skray.partitioned import dtype_of
        from skray.train.batches import train_batches
        from skray.train.deepspeed import lr_factor

        t = cfg.train
        directory = storage.join(self.run_dir, MEMBER_DIR.format(member=member_id))
        saved = read_member_state(directory)
        if self.rank == 0:  # first: a member that fails to build is a row too, with its error
            storage.write_text(storage.join(directory, "params.json"), json.dumps(params | {"slot": self.slot}))
            keep_reports(storage.join(directory, "result.json"), saved["state"]["step"] if saved else None)
        torch.manual_seed(t.seed)
        model = build_model(self.backbone, cfg.method, self.label_names, cfg.data.task == "token_classification")
        place(model, self.device, dtype_of(self.cfg.train.precision), frozen=self.backbone.model)  # as solo
        trains = [p for p in model.parameters() if p.requires_grad]
        with torch.no_grad():  # fp32 masters of what trains, from the same rounded values DeepSpeed keeps
            for p in trains:
                p.data = p.data.float()
        if cfg.method.calibrated:
            from skray.methods.base import content_free_input

            free = content_free_input(self.backbone.tokenizer, cfg.data, not self.backbone.is_decoder)
            with self._autocast():
                model.calibrate(free["input_ids"], free["attention_mask"])
        optimizer = torch.optim.AdamW(trains, lr=t.lr, weight_decay=t.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t.warmup, t.max_steps))
        state, best, step0 = RunState(), None, (None, "")
        if saved:  # where its last report left it
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in saved["weights"]:
                        p.copy_(saved["weights"][n])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            state, best = RunState(**saved["state"]), saved["best"]
            step0 = saved.get("step0"), saved.get("step0_key", "")  # none in a resume.pt tested at step 0
            state.resumed_from = state.step
        rows, skip = len(self.data["train"]["labels"]), state.step * t.grad_accum  # the batches it trained on
        member = Member(
            id=member_id,
            cfg=cfg,
            model=model,
            params=trains,
            optimizer=optimizer,
            schedule=schedule,
            batches=train_batches(rows, t.micro_batch_size, self.rank, self.world, t.seed, skip=skip),
            directory=directory,
            started=time.perf_counter(),
            state=state,
            best=best,
            step0=step0[0],
            step0_key=step0[1],
        )
        member.facts = self.facts | {
            "trainable_params": sum(p.numel() for p in trains),
            "prompt_tokens": model.prompt_tokens,
            "micro_batch_size": t.micro_batch_size,
            "lr": t.lr,
        }
        return member

    def _step(self) -> None:
        """One optimizer step of every member: ``grad_accum`` packed micro-batches, then each member's
        gradients averaged over the workers, clipped and applied by its own optimizer."""
        from skray.data.collate import take
        from skray.methods.packed import packed_forward
        from skray.train.evaluate import task_loss

        accum = self.seats[0].cfg.train.grad_accum
        for _ in range(accum):
            batches = [
                {k: v.to(self.device) for k, v in take(self.data["train"], next(m.batches)).items()} for m in self.seats
            ]
            with self._autocast():
                logits = packed_forward(
                    self.backbone.model,
                    [m.model for m in self.seats],
                    [(b["input_ids"], b["attention_mask"]) for b in batches],
                )
                losses = [
                    task_loss(out, b["labels"], weight=self.class_weight)
                    for out, b in zip(logits, batches, strict=True)
                ]
            (torch.stack(losses).sum() / accum).backward()
            for member, loss, b in zip(self.seats, losses, batches, strict=True):
                member.losses.append(loss.item())
                member.state.train_tokens += int(b["attention_mask"].sum())
        self._average_gradients()
        for member in self.seats:
            torch.nn.utils.clip_grad_norm_(member.params, 1.0)
            member.optimizer.step()
            member.schedule.step()
            member.optimizer.zero_grad(set_to_none=True)

    def _average_gradients(self) -> None:
        """Every member's gradients summed over the workers in one collective, then divided by them."""
        import torch.distributed as dist

        params = [p for m in self.seats for p in m.params]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.world == 1:
            return
        flat = torch.cat([p.grad.flatten() for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        torch.nn.utils.vector_to_parameters(flat, [p.grad for p in params])

    # -- evaluation and reports --------------------------------------------------------------------

    def _scores(
        self, members: list[Member], split: str, predictions: list[dict[str, torch.Tensor]] | None = None
    ) -> list[dict[str, float]]:
        """Each member's scores on ``split``, every batch one packed pass for all of them (and, given
        ``predictions``, each member's per-row predictions there)."""
        start = time.perf_counter()
        with self._autocast():
            scores = evaluate_packed(
                self.backbone.model,
                [m.model for m in members],
                self.data[split],
                batch_size=members[0].cfg.train.eval_batch_size,
                rank=self.rank,
                world=self.world,
                device=self.device,
                label_names=self.label_names,
                predictions=predictions,
            )
        took = time.perf_counter() - start
        self.timing["eval_s"] += took
        for m in members:
            m.state.eval_s += took / len(members)
        return scores

    def _zero_shot(self, joined: list[Member]) -> None:
        """The step-0 model of each new member on validation, and its step-0 report. Members whose
        step-0 models are the same model (``step0_key``: e.g. seeds or learning rates of one
        verbalizer-headed SK setting, whose adapters start as the identity) are scored once per slot.
        Its test score waits for the member's end (``_zero_shot_test``)."""
        from skray.methods.packed import step0_key

        keys = [step0_key(m.model) for m in joined]
        new = {k: m for k, m in zip(keys, joined, strict=True) if k not in self.step0_val}
        if new:
            self.step0_val.update(zip(new, self._scores(list(new.values()), "validation"), strict=True))
        val = [self.step0_val[k] for k in keys]
        for member, key, v in zip(joined, keys, val, strict=True):
            member.state.zero_shot = v
            member.state.best_score, member.state.best_val, member.state.best_step = v[member.key], v, 0
            member.best = member.step0 = trainable_state(member)
            member.step0_key = key
        self._reports(joined, val, final=[False] * len(joined))

    def _zero_shot_test(self, ending: list[Member]) -> None:
        """The step-0 test scores of members about to be tested, from the step-0 weights they kept, once
        per step-0 model as on validation. Deferred from their start: the members ASHA stops are never
        tested (on the RT critics' 1,122 test rows, a member's two test passes read 2,244 rows; its 96
        steps of 4 rows and three validations of 200, 984)."""
        due = [m for m in ending if not m.state.zero_shot_test and m.step0 is not None]
        new = {m.step0_key: m for m in due if m.step0_key not in self.step0_test}
        if new:
            for member in new.values():
                load_trainable(member, member.step0)
            self.step0_test.update(zip(new, self._scores(list(new.values()), "test"), strict=True))
        for member in due:
            member.state.zero_shot_test, member.step0 = self.step0_test[member.step0_key], None

    def _evaluate_and_report(self, due: list[Member]) -> None:
        val = self._scores(due, "validation")
        final = []
        for member, v in zip(due, val, strict=True):
            if v[member.key] > member.state.best_score:
                member.state.best_score, member.state.best_val, member.state.best_step = (
                    v[member.key],
                    v,
                    member.state.step,
                )
                member.best = trainable_state(member)
            final.append(member.state.step >= member.cfg.train.max_steps)
        self._reports(due, val, final)

    def _reports(self, members: list[Member], val: list[dict[str, float]], final: list[bool]) -> None:
        """Reports to the broker (which may stop a member: ASHA), final test scores of the best state
        of members that reached their last step, members' files; ended members leave their seats."""
        import ray

        ending = [m for m, f in zip(members, final, strict=True) if f]
        self._zero_shot_test(ending)
        reports = [self._metrics(m, v) for m, v in zip(members, val, strict=True)]
        predictions: list[dict[str, torch.Tensor]] = [{} for _ in ending]
        if ending:
            for member in ending:
                load_trainable(member, member.best)
            for member, test in zip(ending, self._scores(ending, "test", predictions), strict=True):
                i = members.index(member)
                reports[i] |= {f"test_{k}": v for k, v in test.items() if k != "loss"} | {"done": True}
        decisions = None
        if self.rank == 0:
            start = time.perf_counter()
            decisions = []
            predicted = {id(m): p.get("pred") for m, p in zip(ending, predictions, strict=True)}
            for member, report, done in zip(members, reports, final, strict=True):
                self._write(member, report, predicted.get(id(member)))
                if done:
                    ray.get(self.broker.end.remote(member.id, report, None))
                    decisions.append("end")
                else:
                    decisions.append(ray.get(self.broker.tell.remote(member.id, report)))
            self.timing["write_s"] += time.perf_counter() - start
        decisions = self._agree(decisions)
        for member, decision in zip(members, decisions, strict=True):
            if decision != "continue":
                self.seats = [m for m in self.seats if m is not member]
                if self.rank == 0:
                    drop_member_state(member.directory)

    def _end(self, member_id: str, report: dict | None, error: str | None) -> None:
        """A member that failed: its error where a solo trial's goes, and the broker told."""
        import ray

        if self.rank == 0:
            directory = storage.join(self.run_dir, MEMBER_DIR.format(member=member_id))
            storage.write_text(storage.join(directory, "error.txt"), error or "failed")
            drop_member_state(directory)
            ray.get(self.broker.end.remote(member_id, report, error))

    def _metrics(self, member: Member, val: dict[str, float]) -> dict[str, Any]:
        """A member's report in the table's vocabulary (``skray.results.COLUMNS``)."""
        import torch.distributed as dist

        from skray.train.checkpoint import report_of
        from skray.train.evaluate import all_reduce
        from skray.train.memory import peak_memory_mb

        state, t = member.state, member.cfg.train
        mean_loss = sum(member.losses) / max(1, len(member.losses))
        loss, tokens = all_reduce([mean_loss, float(state.train_tokens)])
        (peak,) = all_reduce([peak_memory_mb(self.device)], op=dist.ReduceOp.MAX)
        member.losses.clear()
        per_step = t.micro_batch_size * t.grad_accum * self.world
        return {
            **member.facts,
            "trial_id": member.id,
            **report_of(state, state.step, val, loss / self.world, tokens, per_step),
            "peak_mem_mb": peak,
            "prompt_passes": member.model.prompt_passes,
        }

    def _write(self, member: Member, report: dict, predictions: torch.Tensor | None = None) -> None:
        """Rank 0: the report appended to the member's result.json, its best weights and meta beside (and
        the final test's per-row predictions, as a solo trial keeps them)."""
        from skray.train.checkpoint import checkpoint_meta, save_checkpoint
        from skray.train.evaluate import save_predictions

        cfg = member.cfg
        meta = checkpoint_meta(cfg, self.label_names, cfg.train.precision, member.state, member.key)
        local = storage.location(storage.join(member.directory, CHECKPOINT))
        if storage.is_uri(member.directory):
            raise NotImplementedError("packed members write to a local or shared run directory")
        report["checkpoint_bytes"] = save_checkpoint(local, member.best, meta)
        if predictions is not None:
            save_predictions(local, self.data["test"]["labels"], predictions)
        path = storage.join(member.directory, "result.json")
        lines = storage.read_text(path) if storage.exists(path) else ""
        storage.write_text(path, lines + json.dumps(report) + "\n")
        if not report.get("done"):
            write_member_state(member)


def write_member_state(member: Member) -> None:
    """A running member's ``resume.pt``: what ``PackedSlot._member`` needs to take it up at this step
    (written whole, then moved over the last one, so a kill leaves the old or the new)."""
    import dataclasses
    import os

    path = storage.location(storage.join(member.directory, RESUME))
    state = {
        "weights": trainable_state(member),
        "optimizer": member.optimizer.state_dict(),
        "schedule": member.schedule.state_dict(),
        "state": dataclasses.asdict(member.state),
        "best": member.best,
        "step0": member.step0,
        "step0_key": member.step0_key,
    }
    torch.save(state, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def read_member_state(directory: str) -> dict[str, Any] | None:
    path = storage.location(storage.join(directory, RESUME))
    return torch.load(path, weights_only=True) if storage.exists(path) else None


def drop_member_state(directory: str) -> None:
    path = storage.join(directory, RESUME)
    if storage.exists(path):
        storage.remove(path)


def keep_reports(path: str, through: int | None) -> None:
    """A member's result.json as its resumed state left it: its reports through step ``through``
    (the ones after were made by steps it will run again); emptied for a member starting at step 0."""
    reports = storage.read_reports(path) if through is not None else []
    kept = [report for report in reports if report.get("step", 0) <= through]
    storage.write_text(path, "".join(f"{json.dumps(report)}\n" for report in kept))


def trainable_state(member: Member) -> dict[str, torch.Tensor]:
    """fp32 copies of what the member trains, named as its model names them (a solo checkpoint's names)."""
    return {n: p.detach().float().clone() for n, p in member.model.named_parameters() if p.requires_grad}


def load_trainable(member: Member, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in member.model.named_parameters():
            if n in state:
                p.copy_(state[n].to(p.dtype))


def evaluate_packed(
    backbone: torch.nn.Module,
    members: list[Any],
    encoded: dict[str, torch.Tensor],
    *,
    batch_size: int,
    rank: int,
    world: int,
    device: torch.device,
    label_names: list[str],
    predictions: list[dict[str, torch.Tensor]] | None = None,
) -> list[dict[str, float]]:
    """Each member's scores (and per-row predictions) on a split as ``skray.train.evaluate.evaluate``
    gives one model's, every batch one packed pass for all of them."""
    from skray.methods.packed import packed_forward
    from skray.train.evaluate import evaluate_many

    for m in members:
        m.eval()
    try:
        return evaluate_many(
            lambda ids, mask: packed_forward(backbone, members, [(ids, mask)] * len(members)),
            len(members),
            encoded,
            batch_size=batch_size,
            rank=rank,
            world=world,
            device=device,
            label_names=label_names,
            predictions=predictions,
        )
    finally:
        for m in members:
            m.train()
