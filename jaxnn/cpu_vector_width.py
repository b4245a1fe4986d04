"""Vector width of XLA:CPU's own kernels: 512-bit on CPUs that run AVX-512 at full clock.

XLA:CPU hands matmuls to its YNN/XNNPACK libraries and compiles everything else (elementwise
fusions, reductions, gathers, the dropout hash) with LLVM, which XLA tells to prefer 256-bit
vectors (``--xla_cpu_prefer_vector_width=256``), even on a CPU with AVX-512. That default dates
from Intel's Skylake-era server chips, whose clock drops while 512-bit instructions run. AMD's
AVX-512 CPUs (Zen 4 and later) run them at full clock, and there 512-bit vectors make the fused
elementwise work faster.

``configure_cpu_vector_width`` chooses it for the whole process, through ``XLA_FLAGS``:

    "auto"  512 on an AMD CPU with AVX-512 (read from /proc/cpuinfo), else XLA's default
    "xla"   XLA's default (256 on x86)
    "128", "256", "512"   that width

The setting is ``setting`` when given; else $JAXNN_CPU_VECTOR_WIDTH when it is set; else the
``train.cpu_vector_width`` of ``config`` (train.py, ``python -m jaxnn.tune``, the bias-variance
sweep and benchmarks/train.py and tune.py pass their run config); else "auto". A width already
in ``XLA_FLAGS`` wins over all of them. XLA reads its flags once, when JAX creates its backends,
so the call must come before JAX's first computation (a later call warns and changes nothing);
like ``jaxnn.host_memory``, this module imports nothing of JAX. In one's own script:

    >>> from jaxnn.cpu_vector_width import configure_cpu_vector_width
    >>> configure_cpu_vector_width()           # first thing; then import and use JAX

Every jitted function of the process gets the width, not only jaxnn's steps (a per-function
``jax.jit(..., compiler_options=...)`` would do it per step, but such a function can no longer
be traced inside another jit, scan or make_jaxpr). GPU and TPU compilers ignore the flag.

Measured on a 2-core AMD EPYC (Zen 5), interleaved in one process (README rows): the default
bag-of-words train step ran 5-10 % faster at 512 than at XLA's default, 18 % slower at 128;
the transformer step (B=64, T=256) 1.5-3 % faster. On an Intel CPU with AVX-512 "auto" keeps
XLA's default; "512" is there to try. The width changes which lanes a vectorized reduction adds
first: the bow step's parameters came out bitwise equal at 256 and 512, the transformer's
differed in the fourth decimal after 20 steps. A run is bitwise reproducible under one width
on one machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from jaxnn.host_memory import process_setting, set_xla_flag

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


def configure_cpu_vector_width(
    setting: str | None = None, *, config: Mapping | None = None
) -> int | None:
    """Apply a setting (see the module docstring) to this process and return the width now in
    force (None: XLA's default)."""
    source = "argument"
    if setting is None:
        setting, source = process_setting(ENV_VAR, config, "cpu_vector_width", "auto")
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
