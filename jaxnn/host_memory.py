"""Moved to `jaxnn.launch.host_memory` (set up a process with `jaxnn.launch.configure_process`).

A temporary re-export for the modules this branch may not edit and that still import it
(jaxnn/train/config.py, benchmarks/attention.py, benchmarks/attention_memory.py); delete it
once they import from jaxnn.launch.
"""

import os

from jaxnn.launch.host_memory import ENV_VAR, MODES, host_allocator
from jaxnn.launch.host_memory import configure_host_allocator as _configure

__all__ = ["ENV_VAR", "MODES", "configure_host_allocator", "host_allocator"]


def configure_host_allocator(mode: str | None = None) -> str:
    """The old call: ``mode``, else $JAXNN_HOST_ALLOCATOR, else "system", applied on any
    backend. New code calls `jaxnn.launch.configure_process`."""
    if mode is None:
        mode = os.environ.get(ENV_VAR) or "system"
        return _configure(mode, source=f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "default")
    return _configure(mode)
