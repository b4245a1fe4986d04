"""XLA:CPU devices per process: one per core, so that every core works through attention.

XLA:CPU splits a dense matmul over the cores, but its YNN kernels run a *batched* matmul (the
attention loop's [pairs, 256, 32] blocks) on one thread, and independent operations of one
program do not overlap in practice, so on a CPU with few cores some idle through attention.
With one XLA device per core and the batch split over them (the data-parallel mesh of
`jaxnn.train.distributed`), each core runs its share of every operation. ``configure_cpu_devices``
sets the number for the whole process, through ``XLA_FLAGS``
(``--xla_force_host_platform_device_count``):

    "1"      one CPU device (XLA's default)
    "N"      N devices (N >= 1)
    "cores"  one per core this process may run on (``os.sched_getaffinity``), fewer when the
             run's batch sizes do not divide by that: the largest count that divides them all

A device count already in ``XLA_FLAGS`` wins. XLA reads its flags once, when JAX creates its
backends, so the call must come before JAX's first computation (a later call warns and changes
nothing); this module imports nothing of JAX. The entry points apply it through
`jaxnn.launch.configure_process`, on CPU runs only (``--cpu_devices`` or $JAXNN_CPU_DEVICES):
GPU and TPU runs form their mesh from their own devices.

"cores" helps the transformer's step and slows the bag-of-words step, whose sparse update does
not split (benchmarks/results/train.md, benchmarks/results/process_settings.md); so it is for
CPU transformer runs (``python train.py --config=configs/imdb_transformer.py --cpu_devices=cores``).
The gradient sum is reordered, so the parameters agree with a one-device run to float32
rounding, not bitwise; a run is bitwise reproducible under one device count.

Several CPU devices in one process sum their gradients with XLA's in-process all-reduce, which
can deadlock when a device runs ahead into the next program while the other still needs a
worker thread (benchmarks/results/cpu_collectives.md). So jaxnn's train and evaluation steps
wait for their result before returning on such a mesh
(`jaxnn.train.distributed.waits_for_each_call`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

from jaxnn.launch.xla_flags import set_xla_flag

ENV_VAR = "JAXNN_CPU_DEVICES"
FLAG = "--xla_force_host_platform_device_count"

ALLOWED = "allowed: 'cores' (one per core) or a whole number >= 1, e.g. '1' or '2'"

_state = {"setting": "1", "devices": 1, "detail": "not configured (one CPU device)"}


def usable_cores() -> int:
    """The number of cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity call (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def resolve(
    setting: str,
    *,
    cores: int | None = None,
    batch_sizes: Iterable[int] = (),
    source: str = "argument",
) -> int:
    """The device count ``setting`` asks for: ``cores`` (default: `usable_cores`) for "cores",
    lowered to the largest count that divides every one of ``batch_sizes``. Raises ValueError
    naming the value, where it came from and what is allowed."""
    text = str(setting).strip()
    if text == "cores":
        count = usable_cores() if cores is None else cores
        sizes = [int(b) for b in batch_sizes if int(b) > 0]
        common = math.gcd(*sizes) if sizes else count
        return max(d for d in range(1, count + 1) if common % d == 0)
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(f"CPU devices from {source} is {setting!r}; {ALLOWED}")


def configure_cpu_devices(
    setting: str, *, batch_sizes: Iterable[int] = (), source: str = "argument"
) -> int:
    """Apply ``setting`` (see the module docstring) to this process and return the number of CPU
    devices now in force. ``batch_sizes``: the run's batch sizes, which "cores" must divide;
    ``source`` says where the setting came from, for errors and logs."""
    count = resolve(setting, batch_sizes=batch_sizes, source=source)
    if str(setting).strip() == "cores":
        source += f"; {usable_cores()} usable cores"
    count, detail = set_xla_flag(
        FLAG,
        None if count == 1 else count,
        source=source,
        caller=f"configure_cpu_devices({setting!r})",
        default="one CPU device",
    )
    devices = count or 1  # None: XLA's default, one device
    _state.update(setting=str(setting).strip(), devices=devices, detail=detail)
    return devices


def cpu_devices() -> dict:
    """{"setting", "devices", "detail"}: what `configure_cpu_devices` did in this process, for
    logs and benchmark tables."""
    return dict(_state)
