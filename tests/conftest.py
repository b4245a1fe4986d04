"""Suite-wide setup: the host allocator from $JAXNN_HOST_ALLOCATOR, as train.py applies it.

It must precede JAX's first computation (jaxnn.host_memory), so it runs when pytest loads this
file, before any test module is imported. JAXNN_HOST_ALLOCATOR=keep runs the suite with freed
blocks kept for reuse; unset, glibc's defaults stay.
"""

from jaxnn.host_memory import configure_host_allocator

configure_host_allocator()


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
