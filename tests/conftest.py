"""Suite-wide setup: the process settings train.py makes (jaxnn.launch), from the environment.

They must precede JAX's first computation, so they are made when pytest loads this file, before
any test module is imported. $JAXNN_HOST_ALLOCATOR, $JAXNN_CPU_VECTOR_WIDTH and
$JAXNN_CPU_DEVICES choose them (e.g. JAXNN_HOST_ALLOCATOR=keep runs the suite with freed blocks
kept for reuse); unset, the suite keeps glibc's and XLA's defaults (vector width "xla"), so its
numbers do not depend on the CPU's vendor. On a GPU or TPU nothing is set.
"""

import gc

import pytest

from jaxnn.launch import configure_process

configure_process(defaults={"cpu_vector_width": "xla"})


@pytest.fixture(autouse=True)
def highest_matmul_precision():
    """Every test runs its float32 matmuls at full float32 precision.

    The exactness tests compare float32 results at ~1e-5, which holds for true float32 dots;
    XLA:GPU runs float32 dots in TF32 (10-bit mantissa) by default and TPUs in bf16 passes, so
    without this the same tests would fail on an accelerator. Tests of low-precision paths
    state their own tolerances, derived from their dtype's epsilon.
    """
    import jax  # here, not at the top: the process settings above precede JAX

    with jax.default_matmul_precision("highest"):
        yield


def pytest_sessionfinish(session, exitstatus):
    """Collect the session's garbage now and freeze what is left, so that pytest's final
    collections (at unconfigure) have nothing to walk.

    Under pytest-xdist a worker that is still busy 5 s after the controller asks it to stop is
    sent SIGINT (execnet); after hundreds of JAX tests the last full collection took that long on
    a loaded machine, the SIGINT landed in hypothesis's gc callback, and `make test` ended with a
    KeyboardInterrupt traceback (PytestUnraisableExceptionWarning). Work done here, before the
    worker reports "finished", does not count against those 5 s.
    """
    gc.collect()
    gc.freeze()


# --- torch peer tests in the terminal summary (issue #29) -------------------------------------
# Tests that compare with PyTorch skip themselves when torch is absent; say so in the summary,
# so a run without the `peers` extra does not read as having checked them.


def _torch_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["torch"] = None
        return False


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if "torch" in str(getattr(report, "longrepr", ""))
    ]
    if not _torch_installed():
        terminalreporter.write_line("torch peer tests: skipped (torch not installed)")
        if skipped:
            terminalreporter.write_line(
                f"  {len(skipped)} torch comparison(s) skipped; install the `peers` extra "
                "(pip install -e '.[test,peers]') to run them"
            )
    else:
        from importlib.metadata import PackageNotFoundError, version

        try:
            torch_version = version("torch")
        except PackageNotFoundError:
            torch_version = "unknown version"
        note = f", {len(skipped)} skipped" if skipped else ""
        terminalreporter.write_line(f"torch peer tests: run against torch {torch_version}{note}")
