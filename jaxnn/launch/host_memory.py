"""Host memory for XLA:CPU: keep freed blocks for reuse instead of handing them back to the kernel.

XLA's CPU runtime allocates every executable's outputs and temporaries with ``malloc`` on each
call and frees them afterwards. glibc serves a block of at least ``M_MMAP_THRESHOLD`` (128 KiB,
rising to at most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``; and each worker thread
allocates from its own arena, whose 64 MiB heaps cannot hold a larger block, so it too is
mmapped. A train step that writes a [64, 4, 256, 256] float32 score matrix (64 MiB) therefore
faults in 16,384 zero-filled pages on every call.

``configure_host_allocator("keep")`` sets, through glibc's ``mallopt``:

    M_ARENA_MAX = 1            every thread allocates from the main heap
    M_MMAP_MAX = 0             no block is mmapped: all come from that heap and are reused
    M_TRIM_THRESHOLD = 2^31-1  the heap's free top is not handed back below 2 GiB

so after the first step the same pages serve every later one: the caching a GPU allocator
does (PyTorch's CUDA allocator, XLA's BFC) applied to host memory. The price is the same too:
the process keeps its peak heap (resident memory does not fall after a large step).

"system" (the default) leaves malloc as it is. "keep" is opt-in because it helps steps that
write large intermediates (long sequences, big batches, materialized attention) and not every
step (benchmarks/results/host_allocator.md and benchmarks/results/process_settings.md).

Call it first in a process, before any JAX computation: M_ARENA_MAX only binds threads that have
not allocated yet, and XLA starts its worker threads with the first computation (a later call
warns; blocks under 64 MiB are still reused then). It only matters where XLA computes on the
host, so the entry points apply it through `jaxnn.launch.configure_process`, on CPU runs only
(``--host_allocator`` or $JAXNN_HOST_ALLOCATOR). Off Linux/glibc there is no mallopt and
"keep" changes nothing. This module imports nothing of JAX, so importing it starts nothing.
"""

from __future__ import annotations

import ctypes
import platform
import warnings

from jaxnn.launch.xla_flags import jax_started

ENV_VAR = "JAXNN_HOST_ALLOCATOR"
MODES = ("keep", "system")

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_KEEP_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))

_state = {"mode": "system", "detail": "not configured (glibc defaults)"}


def configure_host_allocator(mode: str, *, source: str = "argument") -> str:
    """Apply ``mode`` ("keep" or "system") to this process and return the mode now in force.

    ``source`` says where the value came from (a flag, $JAXNN_HOST_ALLOCATOR), for errors and
    logs. "keep" on a system without glibc's mallopt returns "system"; once "keep" is applied
    it stays (a second call is a no-op). Raises ValueError naming the value, its source and
    the modes when it is neither mode.
    """
    check_host_allocator(mode, source=source)
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


def check_host_allocator(mode: str, *, source: str = "argument") -> None:
    """Raise ValueError naming ``mode``, where it came from and the modes, unless it is one."""
    if mode not in MODES:
        allowed = ", ".join(repr(m) for m in MODES)
        raise ValueError(f"host allocator from {source} is {mode!r}; allowed: {allowed}")


def host_allocator() -> dict[str, str]:
    """{"mode": ..., "detail": ...}: what `configure_host_allocator` set in this process, for
    benchmark and run records."""
    return dict(_state)
