"""Timing helpers shared by the benchmarks: wall time of warmed-up callables, interleaved.

Nothing here passes or fails; the benchmarks report medians and ratios measured in one run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


def time_once(run: Callable[[], object]) -> float:
    """Wall seconds of one call of ``run`` (which must block until its work is done)."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def time_interleaved(
    runners: Mapping[str, Callable[[], object]],
    reps: int,
    warmup: int = 0,
    settle_s: float = 0.0,
) -> dict[str, list[float]]:
    """Wall times of each named runner over ``reps`` rounds, the runners alternating within a
    round (rep 1 of every runner, then rep 2, ...), after ``warmup`` untimed calls of each.

    Load from other processes then hits every contender alike, so the ratios of their medians
    survive a busy machine. ``settle_s`` > 0 sleeps that long (untimed) before each call: the
    worker threads of the previous contender (PyTorch's OpenMP pool, XLA's) spin-wait for a
    while after their work and would otherwise take the cores from the next one.
    """
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(reps):
        for name, run in runners.items():
            if settle_s > 0:
                time.sleep(settle_s)
            times[name].append(time_once(run))
    return times
