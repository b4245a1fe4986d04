"""Vector width of XLA:CPU's own kernels: 512-bit on CPUs that run AVX-512 at full clock.

XLA:CPU hands matmuls to its YNN/XNNPACK libraries and compiles everything else (elementwise
fusions, reductions, gathers, the dropout hash) with LLVM, which XLA tells to prefer 256-bit
vectors (``--xla_cpu_prefer_vector_width=256``), even on a CPU with AVX-512. That default dates
from Intel's Skylake-era server chips, whose clock drops while 512-bit instructions run. AMD's
AVX-512 CPUs (Zen 4 and later) run them at full clock, and there 512-bit vectors make the fused
elementwise work faster (benchmarks/results/process_settings.md).

``configure_cpu_vector_width`` chooses it for the whole process, through ``XLA_FLAGS``:

    "auto"  512 on an AMD CPU with AVX-512 (read from /proc/cpuinfo), else XLA's default
    "xla"   XLA's default (256 on x86)
    "128", "256", "512"   that width

A width already in ``XLA_FLAGS`` wins. XLA reads its flags once, when JAX creates its backends,
so the call must come before JAX's first computation (a later call warns and changes nothing);
this module imports nothing of JAX. The entry points apply it through
`jaxnn.launch.configure_process`, on CPU runs only (``--cpu_vector_width`` or
$JAXNN_CPU_VECTOR_WIDTH; default "auto"); GPU and TPU compilers ignore the flag. In one's own
script:

    >>> from jaxnn.launch import configure_process
    >>> settings = configure_process()         # first thing; then import and use JAX

Every jitted function of the process gets the width, not only jaxnn's steps (a per-function
``jax.jit(..., compiler_options=...)`` would do it per step, but such a function can no longer
be traced inside another jit, scan or make_jaxpr). The width changes which lanes a vectorized
reduction adds first, so results can differ in the last bits between widths; a run is bitwise
reproducible under one width on one machine.
"""

from __future__ import annotations

from pathlib import Path

from jaxnn.launch.xla_flags import set_xla_flag

ENV_VAR = "JAXNN_CPU_VECTOR_WIDTH"
SETTINGS = ("auto", "xla", "128", "256", "512")
FLAG = "--xla_cpu_prefer_vector_width"

_state = {"setting": "xla", "width": None, "detail": "not configured (XLA's default)"}


def _cpuinfo_fields(text: str) -> tuple[str, set[str]]:
    """(vendor_id, flags) of the first processor listed in /proc/cpuinfo's text."""
    vendor, flags = "", set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "vendor_id" and not vendor:
            vendor = value.strip()
        elif name == "flags" and not flags:
            flags = set(value.split())
        if vendor and flags:
            break
    return vendor, flags


def full_rate_avx512(cpuinfo: str | None = None) -> bool:
    """Whether this CPU runs 512-bit vector code at full clock, as far as we know: an AMD CPU
    with AVX-512 (Zen 4 and later). ``cpuinfo``: the text of /proc/cpuinfo (read when None;
    False where there is none, e.g. off Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    vendor, flags = _cpuinfo_fields(cpuinfo)
    return vendor == "AuthenticAMD" and "avx512f" in flags


def resolve(setting: str, cpuinfo: str | None = None, *, source: str = "argument") -> int | None:
    """The width ``setting`` asks for on this CPU; None = XLA's default. Raises ValueError
    naming the value, where it came from and what is allowed."""
    if setting not in SETTINGS:
        allowed = ", ".join(repr(s) for s in SETTINGS)
        raise ValueError(f"CPU vector width from {source} is {setting!r}; allowed: {allowed}")
    if setting == "xla":
        return None
    if setting == "auto":
        return 512 if full_rate_avx512(cpuinfo) else None
    return int(setting)


def configure_cpu_vector_width(setting: str, *, source: str = "argument") -> int | None:
    """Apply ``setting`` (see the module docstring) to this process and return the width now in
    force (None: XLA's default). ``source`` says where the setting came from, for errors and
    logs."""
    width = resolve(setting, source=source)
    width, detail = set_xla_flag(
        FLAG,
        width,
        source=source,
        caller=f"configure_cpu_vector_width({setting!r})",
        default="XLA's default",
    )
    _state.update(setting=setting, width=width, detail=detail)
    return width


def cpu_vector_width() -> dict:
    """{"setting", "width" (None: XLA's default), "detail"}: what `configure_cpu_vector_width`
    did in this process, for logs and benchmark tables."""
    return dict(_state)
