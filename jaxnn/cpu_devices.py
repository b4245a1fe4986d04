"""Moved to `jaxnn.launch.cpu_devices`. A temporary re-export for jaxnn/train/config.py, which
this branch may not edit; delete it once that file stops importing it."""

from jaxnn.launch.cpu_devices import ALLOWED, ENV_VAR, FLAG, resolve

__all__ = ["ALLOWED", "ENV_VAR", "FLAG", "resolve"]
