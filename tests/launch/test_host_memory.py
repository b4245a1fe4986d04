"""jaxnn.launch.host_memory: the "keep" setting must put XLA's CPU buffers on glibc's reusable heap.

The check is glibc's own accounting (mallinfo2: bytes in mmapped blocks vs in the arenas), read
in fresh child processes, since the setting is process-wide and must precede JAX's first
computation (tests/conftest.py applies the environment's choice to the test process itself).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from jaxnn.launch import configure_process, host_memory

ROOT = Path(__file__).resolve().parents[2]

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt and mallinfo2 are glibc's",
)

# A jitted x + 1 on a 64 MiB array, its output alive, then glibc's accounting.
_CHILD = textwrap.dedent(
    """
    import ctypes, json, sys, warnings
    from jaxnn.launch import configure_process
    from jaxnn.launch.host_memory import host_allocator
    late = sys.argv[1] == "late"
    import jax.numpy as jnp
    if late:
        jnp.ones(8).block_until_ready()  # JAX's threads start before the setting
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        settings = configure_process(host_allocator=sys.argv[2] or None)
    mode = settings.get("host_allocator").value
    import jax
    x = jnp.ones((4096, 4096), jnp.float32)
    y = jax.jit(lambda a: a + 1.0)(x).block_until_ready()

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
            "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    info = ctypes.CDLL(None).mallinfo2
    info.restype = MallInfo2
    m = info()
    try:  # kB of mappings advised for huge pages ("hg" in VmFlags), and of huge pages in use
        smaps = open("/proc/self/smaps").read().split("\\nVmFlags:")
        sizes = [int(b.split("\\nSize:")[1].split()[0]) for b in smaps[:-1]]
        flags = [b.split("\\n")[0].split() for b in smaps[1:]]
        advised_kb = sum(kb for kb, f in zip(sizes, flags) if "hg" in f)
        rollup = open("/proc/self/smaps_rollup").read()
        huge_kb = int(rollup.split("AnonHugePages:")[1].split()[0])
    except (OSError, IndexError):
        advised_kb = huge_kb = None
    print(json.dumps({"mode": mode, "detail": host_allocator()["detail"],
        "huge_pages": host_allocator()["huge_pages"],
        "mmapped": m.hblkhd, "in_use": m.uordblks, "sum": float(y[0, 0]),
        "advised_kb": advised_kb, "huge_kb": huge_kb,
        "warnings": [str(w.message) for w in caught]}))
    """
)


def _child(allocator: str | None, when: str = "first", flag: str = "") -> dict:
    """The child's report on a CPU run; ``allocator`` = $JAXNN_HOST_ALLOCATOR (None: unset),
    ``flag`` = its --host_allocator ("": not given)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop(host_memory.ENV_VAR, None)
    if allocator is not None:
        env[host_memory.ENV_VAR] = allocator
    args = [when, flag]
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_keep_serves_xla_buffers_from_the_heap_and_system_mmaps_them():
    block = 64 * 2**20
    kept = _child("keep")
    assert kept["mode"] == "keep" and "arena_max=1" in kept["detail"]
    assert kept["mmapped"] < block, kept  # input and output both came from the arenas
    assert kept["in_use"] >= 2 * block, kept
    assert kept["warnings"] == []
    system = _child(None)  # the default leaves glibc alone
    assert system["mode"] == "system" and "glibc defaults (default)" in system["detail"]
    assert system["huge_pages"] == "not advised" and system["advised_kb"] in (0, None), system
    assert system["mmapped"] >= 2 * block, system  # glibc's default: one mmap per large block
    assert kept["sum"] == system["sum"] == 2.0  # same arithmetic either way


@glibc
def test_keep_advises_huge_pages_for_the_heap_where_the_kernel_allows():
    kept = _child("keep")
    why_not = host_memory._why_not_advise()
    if why_not is not None:  # THP never/always/disabled here: said, and nothing advised
        assert kept["huge_pages"] == why_not and f"huge pages: {why_not}" in kept["detail"], kept
        pytest.skip(f"no huge pages to advise here: {why_not}")
    advised = re.fullmatch(r"(\d+) MiB advised", kept["huge_pages"])
    # the block's whole huge pages: at least half of HUGE_HEAP_BYTES with 2 MiB (or 512 MiB) pages
    assert advised and int(advised.group(1)) >= (host_memory.HUGE_HEAP_BYTES >> 20) // 2, kept
    assert f"huge pages: {kept['huge_pages']} ($JAXNN_HOST_ALLOCATOR)" in kept["detail"]
    if kept["advised_kb"] is None:
        pytest.skip("no /proc/self/smaps")
    # the kernel holds the advice: the heap's advised mappings cover what was reported (whether
    # it finds free huge pages for them is its business: not asserted)
    assert kept["advised_kb"] >= int(advised.group(1)) * 1024, kept


def test_huge_page_setting_is_read_from_the_kernel(monkeypatch, tmp_path):
    monkeypatch.setattr(host_memory, "THP_DIR", tmp_path)
    assert host_memory.transparent_huge_pages() == "unavailable"
    assert host_memory._huge_page_bytes() == 2 << 20  # no hpage_pmd_size: x86-64's
    (tmp_path / "hpage_pmd_size").write_text("536870912\n")
    assert host_memory._huge_page_bytes() == 512 << 20
    enabled = tmp_path / "enabled"
    enabled.write_text("always madvise [never]\n")
    assert host_memory.transparent_huge_pages() == "never"
    assert host_memory.advise_huge_heap() == "none: THP never"
    enabled.write_text("[always] madvise never\n")
    assert host_memory.transparent_huge_pages() == "always"
    assert "THP always" in host_memory.advise_huge_heap()
    enabled.write_text("always [madvise] never\n")
    assert host_memory.transparent_huge_pages() == "madvise"
    monkeypatch.delenv("MALLOC_PERTURB_", raising=False)
    process_reason = host_memory._why_not_advise()  # this process's own (prctl, overcommit)
    monkeypatch.setenv("MALLOC_PERTURB_", "165")  # glibc would write the whole GiB
    expected = process_reason or "none: MALLOC_PERTURB_ is set, glibc would fill the whole block"
    assert host_memory._why_not_advise() == expected


@glibc
def test_the_flag_chooses_the_mode_over_the_environment():
    block = 64 * 2**20
    kept = _child(None, flag="keep")
    assert kept["mode"] == "keep" and "(--host_allocator)" in kept["detail"], kept
    assert kept["mmapped"] < block, kept
    overridden = _child("keep", flag="system")
    assert overridden["mode"] == "system", overridden
    assert "glibc defaults (--host_allocator)" in overridden["detail"], overridden
    assert overridden["mmapped"] >= 2 * block, overridden


def test_bad_flag_names_the_value_and_the_choices(monkeypatch):
    monkeypatch.delenv(host_memory.ENV_VAR, raising=False)
    with pytest.raises(ValueError, match=r"from --host_allocator is 'fast'; allowed: 'keep', "):
        configure_process(host_allocator="fast")


@glibc
def test_keep_after_jax_started_warns():
    late = _child("keep", when="late")
    assert late["mode"] == "keep"
    assert any("after JAX's first computation" in w for w in late["warnings"]), late


def test_bad_mode_names_the_value_and_the_choices(monkeypatch):
    with pytest.raises(ValueError, match=r"from argument is 'fast'; allowed: 'keep', 'system'"):
        host_memory.configure_host_allocator("fast")
    monkeypatch.setenv(host_memory.ENV_VAR, "tcmalloc")
    with pytest.raises(ValueError, match=r"from \$JAXNN_HOST_ALLOCATOR is 'tcmalloc'"):
        configure_process()


def test_without_glibc_keep_reports_system(monkeypatch):
    monkeypatch.setitem(host_memory._state, "mode", "system")
    monkeypatch.setitem(host_memory._state, "detail", "")
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    assert host_memory.configure_host_allocator("keep") == "system"
    assert host_memory.host_allocator()["mode"] == "system"
    assert "no glibc mallopt" in host_memory.host_allocator()["detail"]


def test_keep_cannot_be_undone_and_says_so(monkeypatch):
    monkeypatch.setitem(host_memory._state, "mode", "keep")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert host_memory.configure_host_allocator("system") == "keep"
        assert host_memory.configure_host_allocator("keep") == "keep"  # a no-op, silent
    assert [str(w.message) for w in caught] == [
        "host allocator mode 'system' requested after 'keep' was applied in this process; "
        "glibc cannot restore its defaults, so 'keep' stays"
    ]
