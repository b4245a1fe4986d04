"""Host memory for XLA:CPU: keep freed blocks for reuse instead of handing them back to the kernel.

XLA's CPU runtime allocates every executable's outputs and temporaries with ``malloc`` on each
call and frees them afterwards. glibc serves a block of at least ``M_MMAP_THRESHOLD`` (128 KiB,
rising to at most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``; and each worker thread
allocates from its own arena, whose 64 MiB heaps cannot hold a larger block, so it too is
mmapped. A train step that writes a [64, 4, 256, 256] float32 score matrix (64 MiB) therefore
faults in 16,384 zero-filled pages on every call. benchmarks/host_allocator.py times a fresh
64 MiB output, attention and the train steps with glibc's defaults and with this setting.

``configure_host_allocator("keep")`` sets, through glibc's ``mallopt``:

    M_ARENA_MAX = 1            every thread allocates from the main heap
    M_MMAP_MAX = 0             no block is mmapped: all come from that heap and are reused
    M_TRIM_THRESHOLD = 2^31-1  the heap's free top is not handed back below 2 GiB

so after the first step the same pages serve every later one: the caching a GPU allocator
does (PyTorch's CUDA allocator, XLA's BFC) applied to host memory. The price is the same too:
the process keeps its peak heap (resident memory does not fall after a large step).

It is opt-in (``JAXNN_HOST_ALLOCATOR=keep``), because it is not a win everywhere. Measured on a
2-core AMD EPYC: the transformer train step (B=64, T=256) ran 1.2-1.5x faster and XLA's own
attention 1.5x, but the default IMDB bag-of-words run's steady-state epoch took ~15 % longer
(14.7-15.0 s against 12.6-12.9 s; not diagnosed: perhaps its host threads contending for the
one arena; later reruns were within noise). Try it when a step writes large intermediates (long
sequences, big batches, materialized attention). A run config asks for it with
``train.host_allocator = "keep"``, as configs/imdb_transformer.py does (there, 60 steps and the
test evaluation of train.py took 162-181 s of wall against 202-205 s with glibc's defaults,
alternating runs, identical results).

Call it first in a process, before any JAX computation: M_ARENA_MAX only binds threads that have
not allocated yet, and XLA starts its worker threads with the first computation (a later call
warns; blocks under 64 MiB are still reused then). This module imports nothing of jaxnn or JAX,
so importing it starts nothing. train.py, ``python -m jaxnn.tune``,
``python -m jaxnn.analysis.bias_variance``, the benchmarks and the test suite call it with the
environment's choice ($JAXNN_HOST_ALLOCATOR), which, when set, wins over the run config's
``train.host_allocator``; "system" (the default) leaves malloc as it is. Off Linux/glibc there is
no mallopt and "keep" changes nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import sys
import warnings
from collections.abc import Mapping

ENV_VAR = "JAXNN_HOST_ALLOCATOR"
MODES = ("keep", "system")

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_KEEP_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))

_state = {"mode": "system", "detail": "not configured (glibc defaults)"}


def configure_host_allocator(mode: str | None = None, *, config: Mapping | None = None) -> str:
    """Apply a mode ("keep" or "system") and return the mode now in force.

    The mode is ``mode`` when given; else $JAXNN_HOST_ALLOCATOR when it is set (and not empty);
    else the ``train.host_allocator`` of ``config`` (a run config, ConfigDict or dict: train.py,
    the tuner and the bias-variance sweep pass theirs) when it is not empty; else "system". So
    the environment, when set, overrides every config of a process. "keep" on a system without
    glibc's mallopt returns "system"; once "keep" is applied it stays (a second call is a
    no-op). Raises ValueError naming the value and where it came from when it is neither mode.
    """
    source, allowed = "argument", f"{MODES}"
    if mode is None:
        mode, source = process_setting(ENV_VAR, config, "host_allocator", "system")
        if source.startswith("config"):
            allowed += " or '' (the environment's)"
    if mode not in MODES:
        raise ValueError(f"host allocator mode from {source} is {mode!r}; allowed: {allowed}")
    if _state["mode"] == "keep":  # already applied; mallopt offers no way back to the defaults
        if mode == "system":
            warnings.warn(
                "host allocator mode 'system' requested after 'keep' was applied in this "
                "process; glibc cannot restore its defaults, so 'keep' stays",
                stacklevel=2,
            )
        return "keep"
    if mode == "system":
        _state.update(mode="system", detail=f"glibc defaults ({source})")
        return "system"
    libc, version = platform.libc_ver()
    if platform.system() != "Linux" or libc != "glibc":
        _state.update(mode="system", detail=f"no glibc mallopt on {platform.system()} {libc}")
        return "system"
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if jax_started():
        warnings.warn(
            "configure_host_allocator('keep') after JAX's first computation: its worker "
            "threads keep their own arenas, whose blocks over 64 MiB are still mmapped per "
            "call; call it first in the process",
            stacklevel=2,
        )
    failed = [param for param, value in _KEEP_SETTINGS if mallopt(param, value) != 1]
    if failed:  # glibc refused a setting: say so rather than claim the mode
        _state.update(mode="system", detail=f"glibc {version} refused mallopt {failed}")
        return "system"
    _state.update(
        mode="keep",
        detail=f"glibc {version}: arena_max=1, mmap_max=0, trim_threshold=2^31-1 ({source})",
    )
    return "keep"


def process_setting(env_var: str, config: Mapping | None, key: str, default: str):
    """(value, source) of a process-wide setting: ``$env_var`` when it is set (not empty), so
    the environment overrides every config of a process; else the run config's ``train.<key>``
    when not empty; else ``default``. ``source`` says where the value came from, for errors."""
    from_config = ((config or {}).get("train") or {}).get(key, "")
    env = os.environ.get(env_var)
    if env:
        source = f"${env_var}"
        if from_config and from_config != env:
            source += f", over the config's train.{key}={from_config!r}"
        return env, source
    if from_config:
        return from_config, f"config train.{key}"
    return default, f"${env_var} unset"


def set_xla_flag(flag: str, value: int | None, *, source: str, caller: str, default: str):
    """Put ``flag=value`` into ``XLA_FLAGS`` for this process, before JAX starts. Returns
    (the value in force, None for XLA's default; a detail for logs).

    A ``flag`` already in ``XLA_FLAGS`` (the user's own) wins and is returned. ``value`` None
    leaves XLA's default (``default`` names it). After JAX's first computation XLA has read its
    flags: a warning naming ``caller``, and XLA's default stays."""
    flags = os.environ.get("XLA_FLAGS", "")
    given = re.search(rf"{re.escape(flag)}=(\d+)", flags)
    if given:  # the user's own XLA_FLAGS: theirs wins
        return int(given.group(1)), f"{flag}={given.group(1)} from XLA_FLAGS"
    if value is None:
        return None, f"{default} ({source})"
    if jax_started():
        warnings.warn(
            f"{caller} after JAX's first computation: XLA has read its flags, so this process "
            f"keeps {default}; call it first",
            stacklevel=3,
        )
        return None, f"{default} (configured too late)"
    os.environ["XLA_FLAGS"] = f"{flags} {flag}={value}".strip()
    return value, f"{flag}={value} ({source})"


def jax_started() -> bool:
    """Whether JAX has created its backends (and so its CPU worker threads) in this process."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # a JAX without this module: nothing to tell
        return False
    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def host_allocator() -> dict[str, str]:
    """{"mode": ..., "detail": ...}: what `configure_host_allocator` set in this process, for
    benchmark and run records."""
    return dict(_state)
