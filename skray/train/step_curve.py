"""How many members a ``pack: auto`` slot seats: as many as make a training step cheaper per member.

A packed step is one backbone pass over every member's rows. Where the device runs one member's small
batch far below its capacity (a GPU: on an H200 a step of 16 SmolLM2 members cost 1.6-2.7x one
member's, docs/SCALING.md), more members in the pass come almost free until the device is busy; where it
is busy already (a CPU core: 2 members cost 1.74-1.81x one, 4 members 3.6-4x), more seats save little
or no step time, hold more memory and give Optuna its results later (members that run one after
another in a seat let each ask learn from the last). So a slot times a training pass (forward and
backward, no optimizer step) of 1, 2, 4, ... copies of its first member on one micro batch, and goes on
doubling while a doubling cuts each member's share of the pass by at least ``SAVING``; the run's pack
and the worker's memory bound it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

SAVING = 0.10  # the least cut in a member's share of a pass that one more doubling of the seats must bring
REPEATS = 2  # timed passes per size; the fastest is kept (other work on the machine only slows a pass)


def grow(cap: int, pass_seconds: Callable[[int], float]) -> tuple[int, dict[int, float]]:
    """The seats, and the curve measured on the way (members -> seconds a pass): from 1 member, double
    (the last try at ``cap`` itself) while the bigger pass costs each member at least ``SAVING`` less."""
    curve = {1: pass_seconds(1)}
    seats = 1
    while seats < cap:
        bigger = min(2 * seats, cap)
        curve[bigger] = pass_seconds(bigger)
        if curve[bigger] / bigger > (1 - SAVING) * curve[seats] / seats:
            break
        seats = bigger
    return seats, curve


def fastest_seconds(run: Callable[[], None], device: torch.device) -> float:
    """Wall seconds of ``run``, its GPU work included: the fastest of ``REPEATS``."""

    def timed() -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return min(timed() for _ in range(REPEATS))


def seats_line(seats: int, curve: dict[int, float], given: int, memory: int) -> str:
    """What a slot kept and why, with the curve: ``2 seat(s), what memory holds (a pass of 1, 2
    member(s): 0.31, 0.35 s)``; ``given`` the seats the run gave the slot, ``memory`` what fits."""
    if seats == given:
        why = "the most this slot was given"
    elif seats == memory:
        why = "what memory holds"
    else:
        bigger = min(2 * seats, given, memory)
        share = curve[bigger] / bigger, curve[seats] / seats
        why = f"a member's share of the pass is {share[0]:.3g} s at {bigger} against {share[1]:.3g} s at {seats}: "
        why += f"not {SAVING:.0%} less"
    sizes = ", ".join(str(n) for n in curve)
    return f"{seats} seat(s), {why} (a pass of {sizes} member(s): {', '.join(f'{s:.3g}' for s in curve.values())} s)"
