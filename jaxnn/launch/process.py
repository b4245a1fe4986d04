"""`configure_process`: the settings of a CPU process, made at an entry point before JAX starts.

Three settings tune how XLA:CPU uses the host; none changes what is trained, so they are not
part of an experiment's config but of the process that runs it:

    host_allocator    "system" (default) or "keep"             jaxnn.launch.host_memory
    cpu_vector_width  "auto" (default), "xla", "128", "256", "512"   jaxnn.launch.cpu_vector_width
    cpu_devices       "1" (default), a whole number, or "cores"      jaxnn.launch.cpu_devices

Each comes from, first to last: the entry point's flag (an argument here), the environment
($JAXNN_HOST_ALLOCATOR, $JAXNN_CPU_VECTOR_WIDTH, $JAXNN_CPU_DEVICES; empty = unset), the entry
point's own default (``defaults``), the default above. Every value is checked, on any backend.

They are applied only when JAX will compute on the CPU (`jaxnn.launch.backend`), one log line
each. On a GPU or TPU nothing is set and nothing is logged (one debug line), except one warning
naming the settings a caller passed explicitly, since those are ignored there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from jaxnn.launch import cpu_devices as _cpu_devices
from jaxnn.launch import cpu_vector_width as _cpu_vector_width
from jaxnn.launch import host_memory as _host_memory
from jaxnn.launch.backend import Backend, expected_backend

log = logging.getLogger("jaxnn.launch")

DEFAULTS = {"host_allocator": "system", "cpu_vector_width": "auto", "cpu_devices": "1"}
# The defaults of the entry points that train many trials in one vmapped program (``python -m
# jaxnn.tune``, the bias-variance tool, benchmarks/tune.py): K trials' temporaries are K times
# a run's, and freshly mapped pages for them on every step cost more than the step's arithmetic
# (benchmarks/results/tune.md); "keep" reuses them, on huge pages (fewer TLB misses on the rows
# of K trials' tables).
TUNING_DEFAULTS = {"host_allocator": "keep"}
ENV_VARS = {
    "host_allocator": _host_memory.ENV_VAR,
    "cpu_vector_width": _cpu_vector_width.ENV_VAR,
    "cpu_devices": _cpu_devices.ENV_VAR,
}
_warned: set[str] = set()  # explicit settings already reported as ignored in this process


@dataclass(frozen=True)
class AppliedSetting:
    """One setting as applied: ``name`` (a key of `DEFAULTS`), the ``requested`` value, its
    ``source`` (a flag, an environment variable or a default), the ``value`` in force ("keep",
    a width or None for XLA's default, a device count) and a ``detail`` for logs."""

    name: str
    requested: str
    source: str
    value: str | int | None
    detail: str


@dataclass(frozen=True)
class ProcessSettings:
    """What `configure_process` did: the ``backend`` it expected, the settings it ``applied``
    (none off the CPU) and the explicitly passed ones it ``ignored`` (off the CPU)."""

    backend: Backend
    applied: tuple[AppliedSetting, ...]
    ignored: tuple[str, ...] = ()

    def get(self, name: str) -> AppliedSetting | None:
        """The applied setting called ``name``, or None (not applied: not a CPU run)."""
        return next((s for s in self.applied if s.name == name), None)

    def as_dict(self) -> dict:
        """A JSON-ready record, for results files and benchmark tables."""
        return asdict(self)


def _choose(name: str, explicit, defaults: Mapping[str, str]) -> tuple[str, str]:
    """(value, source) of one setting: the argument, else its environment variable, else the
    entry point's default, else `DEFAULTS`."""
    if explicit is not None:
        return str(explicit).strip(), f"--{name}"
    env_var = ENV_VARS[name]
    if os.environ.get(env_var):
        return os.environ[env_var].strip(), f"${env_var}"
    if defaults.get(name) is not None:
        return str(defaults[name]).strip(), "entry point's default"
    return DEFAULTS[name], "default"


def configure_process(
    *,
    host_allocator: str | None = None,
    cpu_vector_width: str | None = None,
    cpu_devices: str | int | None = None,
    batch_sizes: Iterable[int] = (),
    defaults: Mapping[str, str] | None = None,
    backend: Backend | None = None,
) -> ProcessSettings:
    """Check and, on a CPU run, apply the process settings; call it before JAX starts.

    Args:
      host_allocator, cpu_vector_width, cpu_devices: the entry point's flags (None: not given);
        see the module docstring for the values and where an unset one comes from.
      batch_sizes: the run's batch sizes; ``cpu_devices="cores"`` takes the largest count up to
        the usable cores that divides them all.
      defaults: this entry point's defaults, below the environment (e.g. benchmarks/train.py
        runs its transformer with ``{"cpu_devices": "cores"}``).
      backend: the expected backend (default: `expected_backend`, decided without starting JAX).

    Returns:
      A `ProcessSettings` record. Raises ValueError naming a bad value, its source and the
      allowed values, before anything is applied.
    """
    defaults = dict(defaults or {})
    unknown = set(defaults) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown process settings {sorted(unknown)}; known: {list(DEFAULTS)}")
    batch_sizes = [int(b) for b in batch_sizes]
    explicit = {
        "host_allocator": host_allocator,
        "cpu_vector_width": cpu_vector_width,
        "cpu_devices": cpu_devices,
    }
    chosen = {name: _choose(name, value, defaults) for name, value in explicit.items()}
    # every value is checked before anything is applied, on any backend
    value, source = chosen["host_allocator"]
    _host_memory.check_host_allocator(value, source=source)
    value, source = chosen["cpu_vector_width"]
    _cpu_vector_width.resolve(value, source=source)
    value, source = chosen["cpu_devices"]
    _cpu_devices.resolve(value, cores=1, source=source)

    backend = backend or expected_backend()
    if not backend.is_cpu:
        given = tuple(f"{name}={value!r}" for name, value in explicit.items() if value is not None)
        log.debug("backend %s (%s): CPU process settings not applied", *_backend_words(backend))
        fresh = [g for g in given if g not in _warned]
        if fresh:
            _warned.update(fresh)
            log.warning(
                "%s ignored: JAX will run on %s (%s), and these settings apply to CPU runs only",
                ", ".join(fresh),
                *_backend_words(backend),
            )
        return ProcessSettings(backend, (), given)

    applied = []
    value, source = chosen["host_allocator"]  # first: before any thread allocates
    mode = _host_memory.configure_host_allocator(value, source=source)
    detail = _host_memory.host_allocator()["detail"]
    applied.append(AppliedSetting("host_allocator", value, source, mode, detail))
    log.info("host allocator: %s (%s)", mode, detail)

    value, source = chosen["cpu_vector_width"]
    width = _cpu_vector_width.configure_cpu_vector_width(value, source=source)
    detail = _cpu_vector_width.cpu_vector_width()["detail"]
    applied.append(AppliedSetting("cpu_vector_width", value, source, width, detail))
    log.info("CPU vector width: %s -> %s (%s)", value, width or "XLA's default", detail)

    value, source = chosen["cpu_devices"]
    count = _cpu_devices.configure_cpu_devices(value, batch_sizes=batch_sizes, source=source)
    detail = _cpu_devices.cpu_devices()["detail"]
    applied.append(AppliedSetting("cpu_devices", value, source, count, detail))
    log.info("CPU devices: %s -> %d (%s)", value, count, detail)
    return ProcessSettings(backend, tuple(applied))


def _backend_words(backend: Backend) -> tuple[str, str]:
    return backend.platform, backend.reason
