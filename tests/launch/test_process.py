"""jaxnn.launch.configure_process: on a GPU or TPU nothing is set and nothing is logged; on the CPU
each setting is applied and logged; bad values are refused before anything is applied.

The settings are process-wide (XLA_FLAGS read once, mallopt irreversible), so the cases that
apply them run in a fresh child process; the in-process cases only check or refuse.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import jaxnn.launch
from jaxnn.launch import Backend, configure_process, process
from jaxnn.launch import cpu_devices as cd
from jaxnn.launch import cpu_vector_width as cvw
from jaxnn.launch import host_memory as hm

ROOT = Path(__file__).resolve().parents[2]
ENV_VARS = (hm.ENV_VAR, cvw.ENV_VAR, cd.ENV_VAR)


def test_every_public_name_imports():
    for name in jaxnn.launch.__all__:
        assert getattr(jaxnn.launch, name) is not None


@pytest.fixture
def nothing_may_be_applied(monkeypatch):
    """Fail the test if any setting is applied; start from no flags and no settings in the
    environment."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"applied off the CPU: {args} {kwargs}")

    monkeypatch.setattr(hm, "configure_host_allocator", refuse)
    monkeypatch.setattr(cvw, "configure_cpu_vector_width", refuse)
    monkeypatch.setattr(cd, "configure_cpu_devices", refuse)
    monkeypatch.setenv("XLA_FLAGS", "")
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(process, "_warned", set())


@pytest.mark.parametrize("platforms", ["cuda", "tpu", "rocm", "cuda,cpu"])
def test_on_an_accelerator_nothing_is_set_and_nothing_logged(
    monkeypatch, caplog, nothing_may_be_applied, platforms
):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setenv(cd.ENV_VAR, "cores")  # the environment's choice: silently not applied
    environ = dict(os.environ)
    with caplog.at_level(logging.DEBUG, logger="jaxnn.launch"):
        settings = configure_process(batch_sizes=(64, 256))
    assert settings.backend.platform != "cpu" and f"JAX_PLATFORMS={platforms}" in (
        settings.backend.reason
    )
    assert settings.applied == () and settings.ignored == ()
    assert settings.get("cpu_devices") is None
    assert dict(os.environ) == environ  # XLA_FLAGS and every variable as they were
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]  # one debug line at most


def test_the_backend_argument_overrides_detection(monkeypatch, caplog, nothing_may_be_applied):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    with caplog.at_level(logging.INFO, logger="jaxnn.launch"):
        settings = configure_process(backend=Backend("tpu", "given"))
    assert settings.backend.platform == "tpu" and settings.applied == ()
    assert caplog.records == []


def test_on_an_accelerator_explicit_settings_warn_once(monkeypatch, caplog, nothing_may_be_applied):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    with caplog.at_level(logging.INFO, logger="jaxnn.launch"):
        first = configure_process(cpu_devices="cores", host_allocator="keep")
        again = configure_process(cpu_devices="cores", host_allocator="keep")
    assert os.environ["XLA_FLAGS"] == ""
    assert first.ignored == again.ignored == ("host_allocator='keep'", "cpu_devices='cores'")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(caplog.records) == len(warnings) == 1, caplog.text
    assert warnings[0].startswith("host_allocator='keep', cpu_devices='cores' ignored: JAX will")
    assert "gpu (JAX_PLATFORMS=cuda)" in warnings[0] and "CPU runs only" in warnings[0]


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({"cpu_devices": "two"}, {}, "CPU devices from --cpu_devices is 'two'; allowed: 'cores'"),
        ({"cpu_devices": 0}, {}, "CPU devices from --cpu_devices is '0'"),
        ({}, {cd.ENV_VAR: "0"}, "CPU devices from $JAXNN_CPU_DEVICES is '0'"),
        ({"host_allocator": "jemalloc"}, {}, "from --host_allocator is 'jemalloc'; allowed: "),
        ({}, {hm.ENV_VAR: "tcmalloc"}, "from $JAXNN_HOST_ALLOCATOR is 'tcmalloc'"),
        ({"cpu_vector_width": "1024"}, {}, "from --cpu_vector_width is '1024'; allowed: 'auto'"),
        ({"defaults": {"cpu_device": "2"}}, {}, "unknown process settings ['cpu_device']"),
    ],
)
@pytest.mark.parametrize("platforms", ["cpu", "cuda"])
def test_bad_values_are_refused_on_any_backend_before_anything_is_applied(
    monkeypatch, nothing_may_be_applied, kwargs, env, message, platforms
):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as info:
        configure_process(**kwargs)
    assert message in str(info.value)


def test_flag_environment_and_defaults_order(monkeypatch):
    monkeypatch.delenv(cd.ENV_VAR, raising=False)
    defaults = {"cpu_devices": "cores"}
    assert process._choose("cpu_devices", None, {}) == ("1", "default")
    assert process._choose("cpu_devices", None, defaults) == ("cores", "entry point's default")
    monkeypatch.setenv(cd.ENV_VAR, "3")
    assert process._choose("cpu_devices", None, defaults) == ("3", "$JAXNN_CPU_DEVICES")
    assert process._choose("cpu_devices", 2, defaults) == ("2", "--cpu_devices")
    monkeypatch.setenv(cd.ENV_VAR, "")  # empty = unset
    assert process._choose("cpu_devices", None, defaults) == ("cores", "entry point's default")


# Sets up a process as an entry point does, then starts JAX and reports what is in force.
_CHILD = textwrap.dedent(
    """
    import json, logging, os, sys
    logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    from jaxnn.launch import configure_process
    from jaxnn.launch.host_memory import host_allocator
    kwargs = json.loads(sys.argv[1])
    settings = configure_process(batch_sizes=(64, 256), **kwargs)
    xla_flags = os.environ.get("XLA_FLAGS")
    import jax
    devices = len(jax.devices()) if settings.backend.platform == "cpu" else None
    print(json.dumps({"xla_flags": xla_flags, "devices": devices, "settings": settings.as_dict(),
        "allocator": host_allocator()["mode"]}))
    """
)


def _child(kwargs: dict, platforms: str, **env) -> tuple[dict, list[str]]:
    """(the child's report, its log lines); the child imports JAX only on a CPU run."""
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", *ENV_VARS)}
    environ.update(env, PYTHONPATH=str(ROOT), JAX_PLATFORMS=platforms)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(kwargs)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr.strip().splitlines()


def test_on_the_cpu_each_setting_is_applied_and_logged():
    kwargs = {"host_allocator": "keep", "cpu_vector_width": "256", "cpu_devices": "cores"}
    got, log = _child(kwargs, "cpu")
    expected_devices = max(d for d in range(1, cd.usable_cores() + 1) if 64 % d == 0)
    flags = got["xla_flags"] or ""
    assert "--xla_cpu_prefer_vector_width=256" in flags
    assert got["devices"] == expected_devices
    assert (f"{cd.FLAG}={expected_devices}" in flags) == (expected_devices > 1)
    assert [s["name"] for s in got["settings"]["applied"]] == list(process.DEFAULTS)
    assert got["settings"]["backend"] == {"platform": "cpu", "reason": "JAX_PLATFORMS=cpu"}
    launch = [line for line in log if "jaxnn.launch" in line]
    assert len(launch) == 3, log
    assert launch[0].startswith("INFO jaxnn.launch: host allocator: ")
    assert launch[1].startswith("INFO jaxnn.launch: CPU vector width: 256 -> 256 (")
    assert launch[2].startswith(f"INFO jaxnn.launch: CPU devices: cores -> {expected_devices} (")
    assert all("(--" in line for line in launch), launch  # each names its flag
    if hm.platform.libc_ver()[0] == "glibc":
        assert got["allocator"] == "keep" and "keep" in launch[0]


def test_on_the_cpu_environment_settings_apply_too():
    got, log = _child({}, "cpu", JAXNN_CPU_DEVICES="2", JAXNN_CPU_VECTOR_WIDTH="xla")
    assert got["devices"] == 2 and got["xla_flags"] == f"{cd.FLAG}=2"
    assert any("CPU devices: 2 -> 2 (" in line and "$JAXNN_CPU_DEVICES" in line for line in log)


@pytest.mark.parametrize("platforms", ["cuda", "tpu"])
def test_on_an_accelerator_a_fresh_process_sets_and_logs_nothing(platforms):
    """Everything asked for by the environment, nothing by flags: no XLA flag, glibc's
    allocator, and no log line above DEBUG. (JAX is not started: there is no such device.)"""
    env = {hm.ENV_VAR: "keep", cvw.ENV_VAR: "512", cd.ENV_VAR: "cores"}
    got, log = _child({}, platforms, **env)
    assert got["xla_flags"] is None
    assert got["allocator"] == "system" and got["settings"]["applied"] == []
    assert [line for line in log if not line.startswith("DEBUG")] == [], log
    assert len([line for line in log if "jaxnn.launch" in line]) <= 1, log
    flagged, log = _child({"cpu_devices": "cores"}, platforms, **env)
    assert flagged["xla_flags"] is None and flagged["allocator"] == "system"
    warnings = [line for line in log if line.startswith("WARNING")]
    assert len(warnings) == 1 and "cpu_devices='cores' ignored" in warnings[0], log
