"""XLA:CPU devices per process: one per core, so that every core works through attention.

XLA:CPU splits a dense matmul over the cores, but its YNN kernels run a *batched* matmul (the
attention loop's [pairs, 256, 32] blocks) on one thread, and independent operations of one
program do not overlap in practice: on a 2-core CPU one core idles through attention, about
40 % of the transformer's train step. With one XLA device per core and the batch split over
them (the data-parallel mesh of `jaxnn.train.distributed`), each core runs its half of every
operation. ``configure_cpu_devices`` sets the number for the whole process, through
``XLA_FLAGS`` (``--xla_force_host_platform_device_count``):

    "1"      one CPU device (XLA's default)
    "N"      N devices (N >= 1)
    "cores"  one per core this process may run on (``os.sched_getaffinity``), fewer when the
             config's batch sizes (``train.batch_size``, ``train.eval_batch_size``) do not
             divide by that: the largest count that divides both

The setting is ``setting`` when given; else $JAXNN_CPU_DEVICES when it is set; else the
``train.cpu_devices`` of ``config`` (train.py and benchmarks/train.py pass their run config);
else "1". A device count already in ``XLA_FLAGS`` wins over all of them. XLA reads its flags
once, when JAX creates its backends, so the call must come before JAX's first computation (a
later call warns and changes nothing); like ``jaxnn.host_memory``, this module imports nothing
of JAX. GPU and TPU runs are unaffected: their devices, not the CPU's, form the mesh.

Several CPU devices in one process sum their gradients with XLA's in-process all-reduce, which
can deadlock when a device runs ahead into the next program while the other still needs a
worker thread (`benchmarks/cpu_collectives.py` counts it: 3 of 6 chains of 50 dependent steps
hung on 2 cores). So jaxnn's train and evaluation steps wait for their result before returning
on such a mesh (`jaxnn.train.distributed.waits_for_each_call`): a host wait per step, none of
the 6 chains hung that way. Other entry points (``python -m jaxnn.tune``, the bias-variance
sweep) keep one CPU device.

Measured on a 2-core AMD EPYC (Zen 5), B=64, T=256 (README rows): the transformer train step
213 ms on 2 devices against 255 ms on one (a `/tmp` script); in `benchmarks/train.py` 43.6-52.4 %
of the dense matmul rate and 1.90-2.11x PyTorch over five runs, against 36-44 % and 1.5-1.7x on
one device (ten runs the same day). The bag-of-words step ran at about half its speed on 2
devices (its sparse update does not split), so only configs/imdb_transformer.py asks for
"cores". The gradient sum is
reordered, so the parameters agree with a one-device run to float32 rounding, not bitwise; a
run is bitwise reproducible under one device count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

from jaxnn.host_memory import process_setting, set_xla_flag

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


def _batch_sizes(config: Mapping | None) -> list[int]:
    train = (config or {}).get("train") or {}
    return [int(train[k]) for k in ("batch_size", "eval_batch_size") if train.get(k)]


def configure_cpu_devices(setting: str | None = None, *, config: Mapping | None = None) -> int:
    """Apply a setting (see the module docstring) to this process and return the number of CPU
    devices now in force."""
    source = "argument"
    if setting is None:
        setting, source = process_setting(ENV_VAR, config, "cpu_devices", "1")
    count = resolve(setting, batch_sizes=_batch_sizes(config), source=source)
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
    _state.update(setting=setting, devices=devices, detail=detail)
    return devices


def cpu_devices() -> dict:
    """{"setting", "devices", "detail"}: what `configure_cpu_devices` did in this process, for
    logs and benchmark tables."""
    return dict(_state)
