"""Helpers for testing jaxnn itself: train.py runs of a source checkout with injected faults
(`faults`), shared by the reliability tests (tests/reliability, tests/train/test_loop.py) and
the chaos benchmark (benchmarks/chaos.py)."""

from jaxnn.testing.faults import (
    FAULTS,
    TIMING_KEYS,
    driver_command,
    fault_env,
    stop_before_step,
    tiny_train_args,
    without_timings,
)

__all__ = [
    "FAULTS",
    "TIMING_KEYS",
    "driver_command",
    "fault_env",
    "stop_before_step",
    "tiny_train_args",
    "without_timings",
]
