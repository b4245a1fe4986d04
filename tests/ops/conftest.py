"""Shared fixtures for the jaxnn.ops tests."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled (for finite-difference gradient checks)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=["eager", "jit"])
def maybe_jit(request):
    """Wrap a function in jax.jit or leave it eager: every op is tested both ways."""
    return jax.jit if request.param == "jit" else (lambda f: f)
