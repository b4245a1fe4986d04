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

"keep" also grows that heap by `HUGE_HEAP_BYTES` up front and asks the kernel to back it with
transparent huge pages (``madvise(MADV_HUGEPAGE)``, what glibc's own ``glibc.malloc.hugetlb=1``
tunable does, which can only be set before a process starts): a step that reads and writes
scattered rows of tables much larger than the caches (the lazy optimizer's rows of K trials'
embedding tables) then misses the TLB on 2 MiB pages instead of on every 4 KiB one
(benchmarks/results/tune.md). Nothing is touched until used, so the resident memory is what the
program writes, in 2 MiB steps. Where the kernel's THP setting is "never" (or absent) this part
is skipped, and where it is "always" the kernel already does it; the detail says which.

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
from pathlib import Path

from jaxnn.launch.xla_flags import jax_started

ENV_VAR = "JAXNN_HOST_ALLOCATOR"
MODES = ("keep", "system")

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2**31 - 1
_KEEP_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))

# The heap "keep" adds up front for transparent huge pages: below the trim threshold, so that
# glibc never hands it back to the kernel (which would drop the advice with it).
HUGE_HEAP_BYTES = 1 << 30
_HUGE_PAGE = 1 << 21  # x86-64 and most arm64 kernels
_MADV_HUGEPAGE = 14  # <sys/mman.h> on Linux
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")

_state = {"mode": "system", "detail": "not configured (glibc defaults)", "huge_pages": "none"}


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
    huge = _advise_huge_heap()
    _state.update(
        mode="keep",
        huge_pages=huge.removeprefix("huge pages: "),
        detail=f"glibc {version}: arena_max=1, mmap_max=0, trim_threshold=2^31-1, {huge} "
        f"({source})",
    )
    return "keep"


def transparent_huge_pages() -> str:
    """The kernel's transparent huge page setting: "always", "madvise", "never", or
    "unavailable" (no such setting: not Linux, or a kernel without THP)."""
    try:
        text = THP_SETTING.read_text()
    except OSError:
        return "unavailable"
    chosen = text[text.find("[") + 1 : text.find("]")] if "[" in text else ""
    return chosen or "unavailable"


def _advise_huge_heap() -> str:
    """Grow glibc's main heap (the only one once "keep" is set) by `HUGE_HEAP_BYTES` and advise
    huge pages for it; a phrase for the detail saying what was done."""
    thp = transparent_huge_pages()
    if thp == "always":  # the kernel backs the heap with huge pages by itself
        return "huge pages: all anonymous memory (THP always)"
    if thp != "madvise":
        return f"huge pages: none (THP {thp})"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, (ctypes.c_ssize_t,)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.restype, libc.free.argtypes = None, (ctypes.c_void_p,)
    libc.madvise.restype = ctypes.c_int
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    start = libc.sbrk(0)
    # with mmap_max = 0 this block comes from the heap, grown by sbrk to hold it; freed, it
    # joins the heap's free top, which stays (under the trim threshold) for later blocks
    block = libc.malloc(HUGE_HEAP_BYTES)
    end = libc.sbrk(0)
    if block:
        libc.free(block)
    if not block or not start or not end or end <= start:
        return "huge pages: none (the heap could not grow)"
    low = -(-start // _HUGE_PAGE) * _HUGE_PAGE
    if end - low < _HUGE_PAGE:
        return "huge pages: none (the heap could not grow)"
    if libc.madvise(low, end - low, _MADV_HUGEPAGE) != 0:
        return f"huge pages: none (madvise failed, errno {ctypes.get_errno()})"
    return f"huge pages: {(end - low) >> 20} MiB of heap advised (THP madvise)"


def check_host_allocator(mode: str, *, source: str = "argument") -> None:
    """Raise ValueError naming ``mode``, where it came from and the modes, unless it is one."""
    if mode not in MODES:
        allowed = ", ".join(repr(m) for m in MODES)
        raise ValueError(f"host allocator from {source} is {mode!r}; allowed: {allowed}")


def host_allocator() -> dict[str, str]:
    """{"mode": ..., "detail": ..., "huge_pages": ...}: what `configure_host_allocator` set in
    this process, for benchmark and run records ("huge_pages": what "keep" got from the kernel,
    "none" otherwise)."""
    return dict(_state)
