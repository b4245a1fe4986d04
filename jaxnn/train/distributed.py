"""Devices: one `jax.sharding.Mesh` over every device with a "data" axis (data parallelism).

The global batch (``train.batch_size``) is split along "data": each of the M devices holds B / M
rows; parameters and optimizer state are replicated (the same on every device). The jitted steps
name these shardings explicitly, so XLA inserts the gradient all-reduce itself (no pmap).
On one CPU this is a 1-device mesh and costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxnn.train.config import ConfigError

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "check_divisible",
    "describe_mesh",
    "make_mesh",
    "replicated",
    "shard_batch",
]

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis "data" over ``devices`` (default: every device, all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_divisible(name: str, batch_size: int, mesh: Mesh) -> None:
    """Raise `ConfigError` naming ``name`` when the global batch does not split over the devices."""
    count = mesh.shape[DATA_AXIS]
    if batch_size % count:
        raise ConfigError(
            f"{name}={batch_size} must be divisible by the number of devices ({count}: "
            f"{describe_mesh(mesh)}); it is the global batch, split evenly over the devices"
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split along "data"."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host batch (NumPy, this process's rows) -> global jax.Arrays sharded along "data"."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in batch.items()
        if key != "index"
    }


def describe_mesh(mesh: Mesh) -> str:
    """e.g. "1 device (cpu): TFRT_CPU_0" or "4 devices (gpu): cuda:0, cuda:1, ..."."""
    devices = list(mesh.devices.flat)
    platforms = sorted({d.platform for d in devices})
    names = ", ".join(str(d) for d in devices[:8]) + (", ..." if len(devices) > 8 else "")
    plural = "s" if len(devices) != 1 else ""
    return f"{len(devices)} device{plural} ({'/'.join(platforms)}): {names}"
