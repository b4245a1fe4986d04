"""XLA_FLAGS for this process, written before JAX starts; and whether JAX has started.

XLA reads ``XLA_FLAGS`` once, when JAX creates its backends (the first computation or the first
``jax.devices()``), so a flag must be in the environment before then. This module imports
nothing of JAX.
"""

from __future__ import annotations

import os
import re
import sys
import warnings


def set_xla_flag(
    flag: str, value: int | None, *, source: str, caller: str, default: str
) -> tuple[int | None, str]:
    """Put ``flag=value`` into ``XLA_FLAGS`` for this process, before JAX starts.

    Returns (the value in force, None for XLA's default; a detail for logs). A ``flag`` already
    in ``XLA_FLAGS`` (the user's own) wins and is returned. ``value`` None leaves XLA's default
    (``default`` names it). After JAX's first computation XLA has read its flags: a warning
    naming ``caller``, and XLA's default stays.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    given = re.search(rf"{re.escape(flag)}=(\d+)", flags)
    if given:  # the user's own XLA_FLAGS: theirs wins
        return int(given.group(1)), f"{flag}={given.group(1)} from XLA_FLAGS"
    if value is None:
        return None, f"{default} ({source})"
    if jax_started():
        warnings.warn(
            f"{caller} after JAX's first computation: XLA has read its flags, so this process "
            f"keeps {default}; call it first",
            stacklevel=3,
        )
        return None, f"{default} (configured too late)"
    os.environ["XLA_FLAGS"] = f"{flags} {flag}={value}".strip()
    return value, f"{flag}={value} ({source})"


def jax_started() -> bool:
    """Whether JAX has created its backends (and so its CPU worker threads) in this process."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # a JAX without this module: nothing to tell
        return False
    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())
