"""Shared fixtures for the jaxnn.ops tests."""

import jax
import pytest


@pytest.fixture(autouse=True)
def highest_matmul_precision():
    """Every test here runs its float32 matmuls at full float32 precision.

    The exactness tests compare float32 results at ~1e-5, which holds for true float32 dots;
    XLA:GPU runs float32 dots in TF32 (10-bit mantissa) by default and TPUs in bf16 passes,
    so without this the same tests would fail on an accelerator. Tests of low-precision paths
    state their own tolerances, derived from their dtype's epsilon.
    """
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled (for finite-difference gradient checks)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=["eager", "jit"])
def maybe_jit(request):
    """Wrap a function in jax.jit or leave it eager: every op is tested both ways."""
    return jax.jit if request.param == "jit" else (lambda f: f)
