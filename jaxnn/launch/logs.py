"""Third-party log levels: JAX's, absl's and orbax's INFO chatter kept out of a run's log."""

from __future__ import annotations

import logging

# loggers whose INFO lines describe their own internals, not the run (orbax logs each
# checkpoint's steps through absl; JAX's xla_bridge which platforms it tried)
THIRD_PARTY_LOGGERS = ("absl", "jax._src.xla_bridge", "orbax")


def quiet_third_party_logs(verbose: bool = False) -> None:
    """Set `THIRD_PARTY_LOGGERS` to WARNING, or to INFO with ``verbose`` (a ``--verbose`` flag).

    jaxnn's own loggers ("jaxnn.*") are left alone. Safe to call more than once.
    """
    level = logging.INFO if verbose else logging.WARNING
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(level)
