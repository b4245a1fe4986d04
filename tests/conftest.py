"""Suite-wide setup: the host allocator from $JAXNN_HOST_ALLOCATOR, as train.py applies it.

It must precede JAX's first computation (jaxnn.host_memory), so it runs when pytest loads this
file, before any test module is imported. JAXNN_HOST_ALLOCATOR=keep runs the suite with freed
blocks kept for reuse; unset, glibc's defaults stay.
"""

from jaxnn.host_memory import configure_host_allocator

configure_host_allocator()
