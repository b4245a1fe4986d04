"""Settings of the process, made once at an entry point before JAX starts.

    from jaxnn.launch import configure_process, quiet_third_party_logs
    settings = configure_process(cpu_devices=flags.cpu_devices)   # before JAX's first computation
    import jax

`configure_process` reads the CPU settings (host allocator, vector width, device count) from the
entry point's flags, else the environment ($JAXNN_HOST_ALLOCATOR, $JAXNN_CPU_VECTOR_WIDTH,
$JAXNN_CPU_DEVICES), else defaults, and applies them only when JAX will run on the CPU
(`expected_backend`, decided without starting JAX). train.py, ``python -m jaxnn.tune``,
``python -m jaxnn.analysis.bias_variance``, the benchmarks and tests/conftest.py call it.

Modules: backend (which backend JAX will use), process (`configure_process`), host_memory,
cpu_vector_width, cpu_devices (one setting each), xla_flags (XLA_FLAGS before JAX starts),
logs (third-party log levels). Nothing here imports JAX.
"""

from jaxnn.launch.backend import Backend, expected_backend, installed_plugins
from jaxnn.launch.logs import quiet_third_party_logs
from jaxnn.launch.process import (
    TUNING_DEFAULTS,
    AppliedSetting,
    ProcessSettings,
    configure_process,
)

__all__ = [
    "TUNING_DEFAULTS",
    "AppliedSetting",
    "Backend",
    "ProcessSettings",
    "configure_process",
    "expected_backend",
    "installed_plugins",
    "quiet_third_party_logs",
]
