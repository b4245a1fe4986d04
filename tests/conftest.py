"""Suite-wide setup: jaxnn's host allocator setting, as train.py and the benchmarks use it.

It must precede JAX's first computation (jaxnn.host_memory), so it runs when pytest loads this
file, before any test module is imported. JAXNN_HOST_ALLOCATOR=system runs the suite on glibc's
defaults instead.
"""

from jaxnn.host_memory import configure_host_allocator

configure_host_allocator()
