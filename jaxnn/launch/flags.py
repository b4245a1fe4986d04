"""The entry points' flags for `configure_process`: --host_allocator, --cpu_vector_width,
--cpu_devices (absl flags; train.py, ``python -m jaxnn.tune``, the bias-variance sweep).

Every flag is a plain string, None when not given, so that the environment and the defaults of
`configure_process` apply, and a bad value is refused there with one ``error:`` line naming it.
"""

from __future__ import annotations

from collections.abc import Callable

from absl import flags

HELP = {
    "host_allocator": "CPU runs: 'system' (glibc's defaults) or 'keep' (freed host blocks "
    "reused: steps with large intermediates). Default: $JAXNN_HOST_ALLOCATOR, else system "
    "(keep for the tuner and the bias-variance tool).",
    "cpu_vector_width": "CPU runs: XLA:CPU's vector width, auto (512 on AMD AVX-512), xla, 128, "
    "256 or 512. Default: $JAXNN_CPU_VECTOR_WIDTH, else auto.",
    "cpu_devices": "CPU runs: XLA:CPU devices of this process, 1, a whole number, or cores (one "
    "per core, the batch split over them). Default: $JAXNN_CPU_DEVICES, else 1.",
}


def define_process_flags(
    flag_values: flags.FlagValues = flags.FLAGS,
) -> Callable[[], dict[str, str | None]]:
    """Define the three flags; returns a function that gives their values (None when not
    given) as keyword arguments of `configure_process`, once the flags are parsed."""
    holders = {
        name: flags.DEFINE_string(name, None, help_text, flag_values=flag_values)
        for name, help_text in HELP.items()
    }
    return lambda: {name: holder.value for name, holder in holders.items()}
