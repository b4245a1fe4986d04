"""jaxnn.launch.cpu_devices: the setting must reach XLA:CPU (a process's device count), only
through a call made before JAX starts; and a mesh of in-process CPU devices must not deadlock
XLA's all-reduce. The device count is process-wide (XLA_FLAGS, read once), so those cases run in a
fresh child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import pytest

from jaxnn.launch import cpu_devices as cd
from jaxnn.train.distributed import in_process_cpu_collectives, make_mesh, waits_for_each_call

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("setting", "cores", "batch_sizes", "expected"),
    [
        ("1", 8, (), 1),
        ("3", 2, (64,), 3),  # an explicit count is taken as given (the mesh checks the batch)
        (" 2 ", 8, (), 2),
        ("cores", 2, (64, 256), 2),
        ("cores", 4, (6, 256), 2),  # the largest count <= 4 dividing 6 and 256
        ("cores", 4, (6,), 3),
        ("cores", 2, (5, 7), 1),
        ("cores", 16, (), 16),
    ],
)
def test_resolve(setting, cores, batch_sizes, expected):
    assert cd.resolve(setting, cores=cores, batch_sizes=batch_sizes) == expected


@pytest.mark.parametrize("bad", ["0", "-1", "two", "", "1.5", "auto"])
def test_resolve_rejects_bad_values_naming_source_and_allowed(bad):
    with pytest.raises(ValueError) as info:
        cd.resolve(bad, source="$JAXNN_CPU_DEVICES")
    message = str(info.value)
    assert f"$JAXNN_CPU_DEVICES is {bad!r}" in message
    assert "'cores'" in message and "whole number >= 1" in message


def test_usable_cores_is_this_process_affinity():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cd.usable_cores() == expected


def test_too_late_warns_and_changes_nothing(monkeypatch):
    jax.devices()  # JAX has started in this process
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.delenv(cd.ENV_VAR, raising=False)
    with pytest.warns(UserWarning, match="after JAX's first computation"):
        assert cd.configure_cpu_devices("2") == 1
    assert cd.FLAG not in os.environ["XLA_FLAGS"]
    assert cd.cpu_devices()["devices"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cd.configure_cpu_devices("1") == 1  # nothing to apply: silent


def test_one_device_mesh_steps_are_not_wrapped():
    mesh = make_mesh()
    assert not in_process_cpu_collectives(mesh)
    step = jax.jit(lambda x: x + 1)
    assert waits_for_each_call(step, mesh) is step


CHILD = textwrap.dedent(
    """
    import json, sys
    from jaxnn.launch import configure_process
    from jaxnn.launch.cpu_devices import cpu_devices
    batch_sizes = json.loads(sys.argv[2])
    settings = configure_process(cpu_devices=sys.argv[1] or None, batch_sizes=batch_sizes)
    import jax
    count = settings.get("cpu_devices").value
    print(json.dumps({"count": count, "devices": len(jax.devices()), **cpu_devices()}))
    """
)


def _child(setting: str | None, batch_sizes: tuple[int, ...] = (), **env) -> dict:
    """The child's report on a CPU run; ``setting``: its --cpu_devices (None: not given)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cd.ENV_VAR)}
    environ.update(env, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, setting or "", json.dumps(list(batch_sizes))],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_setting_reaches_xla_and_flag_environment_and_xla_flags_precedence():
    got = _child("2")
    assert got["count"] == got["devices"] == 2 and "(--cpu_devices)" in got["detail"]
    got = _child(None, JAXNN_CPU_DEVICES="3")  # the environment, when no flag is given
    assert got["count"] == got["devices"] == 3 and "$JAXNN_CPU_DEVICES" in got["detail"]
    got = _child("2", JAXNN_CPU_DEVICES="3")  # the flag wins over the environment
    assert got["count"] == got["devices"] == 2 and "(--cpu_devices)" in got["detail"]
    got = _child("2", XLA_FLAGS=f"{cd.FLAG}=4")  # the user's own XLA flag wins over both
    assert got["count"] == got["devices"] == 4 and "from XLA_FLAGS" in got["detail"]
    assert _child(None)["devices"] == 1  # default: one device
    cores = cd.usable_cores()
    got = _child("cores", (64, 256))
    expected = max(d for d in range(1, cores + 1) if 64 % d == 0)
    assert got["count"] == got["devices"] == expected


STRESS = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxnn.train.distributed import make_mesh, waits_for_each_call
    mesh = make_mesh()
    assert mesh.size == 2
    rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    w = jax.device_put(jax.random.normal(jax.random.key(0), (128, 128)), rep)
    x = jax.device_put(jax.random.normal(jax.random.key(1), (4096, 128)), rows)
    step = waits_for_each_call(
        jax.jit(lambda w, x, c: c + jnp.sum(jnp.tanh(x @ w) @ w, axis=0)), mesh)
    carry = jax.device_put(jnp.zeros(128), rep)
    for _ in range(400):
        carry = step(w, x, carry)
    print("done", float(carry[0]))
    """
)


def test_waiting_steps_do_not_deadlock_xla_in_process_all_reduce():
    """A chain of dependent steps summing over a 2-device mesh: dispatched without waiting it
    hung in 3 of 6 chains of 50 on 2 cores (benchmarks/cpu_collectives.py); XLA aborts such a
    process after 40 s, so a hang fails this test."""
    environ = {k: v for k, v in os.environ.items() if k != cd.ENV_VAR}
    environ.update(XLA_FLAGS=f"{cd.FLAG}=2", PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", STRESS], env=environ, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0 and "done" in out.stdout, out.stderr[-2000:]


@pytest.mark.slow  # a whole train.py run on 2 forced devices: about a minute on 2 cores
def test_train_py_runs_data_parallel_over_cpu_devices(tmp_path):
    """`train.py --cpu_devices=2`: the log names the count, the mesh spans both devices, and
    training and the test evaluation finish (each step waits for its result)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cd.ENV_VAR)}
    environ.update(JAX_PLATFORMS="cpu")
    workdir = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"--config={ROOT / 'configs' / 'tiny.py'}",
            f"--workdir={workdir}",
            "--config.model.name=transformer",
            "--config.train.num_epochs=1",
            "--cpu_devices=2",
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CPU devices: 2 -> 2" in out.stderr
    assert "mesh data=2" in out.stderr
    results = json.loads((workdir / "results.json").read_text())
    assert "2 devices" in json.dumps(results["devices"])
    assert 0.0 <= results["test"]["accuracy"] <= 1.0
