"""Which backend JAX will run on, decided before JAX starts.

The CPU process settings (host allocator, vector width, device count) must be made before JAX
creates its backends, so the question "will this process compute on the CPU?" has to be
answered without asking JAX (``jax.default_backend()`` would create the backends, and with them
read ``XLA_FLAGS`` and start XLA:CPU's worker threads). It is answered the way JAX itself picks
its default backend, from what is visible without loading any plugin:

1. ``$JAX_PLATFORMS`` (a comma-separated list; JAX uses the first entry that starts), else the
   older ``$JAX_PLATFORM_NAME``: its first entry names the backend ("cuda", "rocm" and "gpu"
   mean the GPU).
2. Else an installed accelerator plugin with a device this machine has: a CUDA plugin
   (``jax_cuda12_plugin``, ``jax_cuda13_plugin``, ``jax_plugins.xla_cuda*``) and an NVIDIA GPU
   (``/dev/nvidia<N>`` or ``/proc/driver/nvidia/gpus/*``; ``$CUDA_VISIBLE_DEVICES`` empty or
   "-1" hides them all); a ROCm plugin (``jax_rocm*``, ``jax_plugins.xla_rocm*``) and
   ``/dev/kfd``; ``libtpu`` and a TPU chip (``/dev/accel<N>`` or ``/dev/vfio/<N>``).
3. Else the CPU.

A plugin installed on a machine without its device (a CUDA wheel on a laptop) leaves JAX on the
CPU, and so it does here. Set ``JAX_PLATFORMS`` to make the choice explicit.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# JAX_PLATFORMS entries -> the backend they mean
_PLATFORM_NAMES = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "tpu": "tpu"}
# top-level modules of accelerator plugins that register no "jax_plugins" entry point
_PLUGIN_MODULES = (
    "jax_cuda12_plugin",
    "jax_cuda13_plugin",
    "jax_rocm60_plugin",
    "jax_rocm7_plugin",
    "libtpu",
)


@dataclass(frozen=True)
class Backend:
    """The backend JAX is expected to use: ``platform`` is "cpu", "gpu", "tpu" (or another name
    ``$JAX_PLATFORMS`` gave, e.g. "metal"); ``reason`` says what decided it, for logs."""

    platform: str
    reason: str

    @property
    def is_cpu(self) -> bool:
        return self.platform == "cpu"


def installed_plugins() -> list[str]:
    """Module names of the JAX accelerator plugins installed here (none is imported)."""
    names = set()
    try:
        for entry in importlib.metadata.entry_points(group="jax_plugins"):
            names.add(entry.value.split(":")[0])
    except Exception:  # a broken distribution's metadata must not stop the launch
        pass
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations:
        for module in pkgutil.iter_modules(spec.submodule_search_locations):
            names.add(f"jax_plugins.{module.name}")
    for name in _PLUGIN_MODULES:
        if importlib.util.find_spec(name) is not None:
            names.add(name)
    return sorted(names)


def _any(root: Path, pattern: str) -> bool:
    return any(root.glob(pattern))


def expected_backend(
    environ: Mapping[str, str] | None = None,
    plugins: list[str] | None = None,
    root: Path = Path("/"),
) -> Backend:
    """The backend JAX will pick in this process (see the module docstring), without starting
    JAX. ``environ`` (default ``os.environ``), ``plugins`` (default `installed_plugins`) and
    ``root`` (where /dev and /proc are) are there for tests."""
    env = os.environ if environ is None else environ
    for var in ("JAX_PLATFORMS", "JAX_PLATFORM_NAME"):
        entries = [p.strip().lower() for p in env.get(var, "").split(",") if p.strip()]
        if entries:
            return Backend(_PLATFORM_NAMES.get(entries[0], entries[0]), f"{var}={env[var]}")
    plugins = installed_plugins() if plugins is None else plugins
    cuda = [p for p in plugins if "cuda" in p]
    rocm = [p for p in plugins if "rocm" in p]
    tpu = [p for p in plugins if "tpu" in p]
    if cuda:
        hidden = env.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1")
        if not hidden and (
            _any(root / "dev", "nvidia[0-9]*") or _any(root / "proc/driver/nvidia/gpus", "*")
        ):
            return Backend("gpu", f"{cuda[0]} and an NVIDIA GPU")
    if rocm and (root / "dev" / "kfd").exists():
        return Backend("gpu", f"{rocm[0]} and /dev/kfd")
    if tpu and (_any(root / "dev", "accel[0-9]*") or _any(root / "dev/vfio", "[0-9]*")):
        return Backend("tpu", f"{tpu[0]} and a TPU chip")
    if plugins:
        return Backend("cpu", f"{', '.join(plugins)} installed, but no device of theirs here")
    return Backend("cpu", "no accelerator plugin installed")
