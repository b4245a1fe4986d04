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

"keep" also asks the kernel to back the first `HUGE_HEAP_BYTES` (1 GiB) of that heap with
transparent huge pages: it grows the heap by that much up front (one malloc, freed at once) and
calls ``madvise(MADV_HUGEPAGE)`` on it. A step that reads and writes scattered rows of tables
much larger than the caches (the lazy optimizer's rows of K trials' embedding tables) then
misses the TLB once per huge page rather than per 4 KiB page (the tuning rows of
benchmarks/RESULTS.md). glibc's ``glibc.malloc.hugetlb=1`` tunable does this for every heap
extension but can only be set before a process starts; here it is done once, so the heap beyond
its first GiB keeps 4 KiB pages, and the advice is lost if glibc ever trims the heap (a free top
over the 2 GiB threshold, after a step that needed more than that). Costs: 1 GiB more virtual
memory and commit charge for the life of the process; nothing is touched until used, and the
resident memory grows in huge-page steps. Skipped where it cannot help or would cost: THP
"never" or absent, "always" (the kernel does it anyway), THP disabled for this process (prctl),
strict overcommit (``vm.overcommit_memory = 2``), or ``MALLOC_PERTURB_`` set (glibc would fill
the whole block); the detail says which.

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
import os
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

# The heap "keep" advises for transparent huge pages: under the trim threshold, so that glibc
# keeps it (freed, it joins the heap's free top) while the heap stays below 2 GiB.
HUGE_HEAP_BYTES = 1 << 30
_MADV_HUGEPAGE = 14  # <sys/mman.h>, the same on every Linux architecture
THP_DIR = Path("/sys/kernel/mm/transparent_hugepage")
NOT_ADVISED = "not advised"

_state = {
    "mode": "system",
    "detail": "not configured (glibc defaults)",
    "huge_pages": NOT_ADVISED,
}


def _system(detail: str) -> str:
    """Record glibc's own allocator as the mode in force (nothing advised) and return it."""
    _state.update(mode="system", detail=detail, huge_pages=NOT_ADVISED)
    return "system"


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
        return _system(f"glibc defaults ({source})")
    libc, version = platform.libc_ver()
    if platform.system() != "Linux" or libc != "glibc":
        return _system(f"no glibc mallopt on {platform.system()} {libc}")
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
        return _system(f"glibc {version} refused mallopt {failed}")
    huge = advise_huge_heap()
    _state.update(
        mode="keep",
        huge_pages=huge,
        detail=f"glibc {version}: arena_max=1, mmap_max=0, trim_threshold=2^31-1; "
        f"huge pages: {huge} ({source})",
    )
    return "keep"


def transparent_huge_pages() -> str:
    """The kernel's transparent huge page setting: "always", "madvise", "never", or
    "unavailable" (no such setting: not Linux, or a kernel without THP)."""
    try:
        text = (THP_DIR / "enabled").read_text()
    except OSError:
        return "unavailable"
    chosen = text[text.find("[") + 1 : text.find("]")] if "[" in text else ""
    return chosen or "unavailable"


def _huge_page_bytes() -> int:
    """The size of a transparent huge page (2 MiB on x86-64; 32 or 512 MiB on arm64 kernels
    with 16 or 64 KiB base pages)."""
    try:
        return int((THP_DIR / "hpage_pmd_size").read_text())
    except (OSError, ValueError):
        return 1 << 21


def _why_not_advise() -> str | None:
    """Why huge pages are not advised in this process ("none: why"), or None."""
    thp = transparent_huge_pages()
    if thp == "always":
        return "none advised: THP always, the kernel backs all anonymous memory with them"
    if thp != "madvise":
        return f"none: THP {thp}"
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    if "THP_enabled:\t0" in status:
        return "none: THP disabled for this process"
    try:
        if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "2":
            return "none: strict overcommit, the reserved GiB would count against its limit"
    except OSError:
        pass
    if os.environ.get("MALLOC_PERTURB_", "0") not in ("", "0"):
        return "none: MALLOC_PERTURB_ is set, glibc would fill the whole block"
    return None


def advise_huge_heap() -> str:
    """Advise transparent huge pages for `HUGE_HEAP_BYTES` of glibc's heap (see the module
    docstring); called by `configure_host_allocator` ("keep", mmap off, one arena for the
    threads that have not allocated yet). Returns what was done: "N MiB advised" or "none: why"."""
    why = _why_not_advise()
    if why is not None:
        return why
    libc = ctypes.CDLL(None, use_errno=True)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.restype, libc.free.argtypes = None, (ctypes.c_void_p,)
    libc.madvise.restype = ctypes.c_int
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    # with mmap_max = 0 the block comes from the heap (grown by sbrk, or glibc's fallback when
    # sbrk cannot grow it); the advice covers its whole huge pages, and freed, it joins the
    # heap's free top for later blocks
    block = libc.malloc(HUGE_HEAP_BYTES)
    if not block:
        return f"none: malloc of {HUGE_HEAP_BYTES >> 20} MiB failed"
    page = _huge_page_bytes()
    low = -(-block // page) * page
    high = (block + HUGE_HEAP_BYTES) // page * page
    if high <= low:
        libc.free(block)
        return f"none: no whole {page >> 20} MiB page in the block"
    failed = libc.madvise(low, high - low, _MADV_HUGEPAGE)
    errno = ctypes.get_errno()
    libc.free(block)
    if failed:
        return f"none: madvise failed, errno {errno}"
    return f"{(high - low) >> 20} MiB advised"


def check_host_allocator(mode: str, *, source: str = "argument") -> None:
    """Raise ValueError naming ``mode``, where it came from and the modes, unless it is one."""
    if mode not in MODES:
        allowed = ", ".join(repr(m) for m in MODES)
        raise ValueError(f"host allocator from {source} is {mode!r}; allowed: {allowed}")


def host_allocator() -> dict[str, str]:
    """{"mode": ..., "detail": ..., "huge_pages": ...}: what `configure_host_allocator` set in
    this process, for benchmark and run records ("huge_pages": what "keep" advised,
    `advise_huge_heap`'s answer; "not advised" in any other mode)."""
    return dict(_state)
