"""Moved to `jaxnn.launch.cpu_vector_width`. A temporary re-export for jaxnn/train/config.py,
which this branch may not edit; delete it once that file stops importing it."""

from jaxnn.launch.cpu_vector_width import ENV_VAR, FLAG, SETTINGS, resolve

__all__ = ["ENV_VAR", "FLAG", "SETTINGS", "resolve"]
