"""jaxnn.launch.backend: the backend JAX will use, decided from the environment, the installed
plugins and the machine's device files, without starting JAX."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jaxnn.launch.backend import expected_backend

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("environ", "platform"),
    [
        ({"JAX_PLATFORMS": "cpu"}, "cpu"),
        ({"JAX_PLATFORMS": "cuda"}, "gpu"),
        ({"JAX_PLATFORMS": "cuda,cpu"}, "gpu"),  # JAX tries the first entry first
        ({"JAX_PLATFORMS": " CPU , cuda"}, "cpu"),
        ({"JAX_PLATFORMS": "rocm"}, "gpu"),
        ({"JAX_PLATFORMS": "tpu"}, "tpu"),
        ({"JAX_PLATFORMS": "metal"}, "metal"),
        ({"JAX_PLATFORM_NAME": "gpu"}, "gpu"),
        ({"JAX_PLATFORMS": "cpu", "JAX_PLATFORM_NAME": "gpu"}, "cpu"),
        ({"JAX_PLATFORMS": "", "JAX_PLATFORM_NAME": "tpu"}, "tpu"),
    ],
)
def test_jax_platforms_decides_first(tmp_path, environ, platform):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidia0").touch()  # a GPU, which the variable overrides
    got = expected_backend(environ, plugins=["jax_cuda12_plugin"], root=tmp_path)
    assert got.platform == platform
    assert got.is_cpu == (platform == "cpu")
    assert "JAX_PLATFORM" in got.reason


def _machine(tmp_path: Path, *files: str) -> Path:
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return tmp_path


@pytest.mark.parametrize(
    ("plugins", "files", "environ", "platform"),
    [
        ([], ["dev/nvidia0"], {}, "cpu"),  # a GPU without JAX's CUDA plugin: JAX uses the CPU
        (["jax_cuda12_plugin"], [], {}, "cpu"),  # the CUDA wheel on a machine without a GPU
        (["jax_cuda12_plugin"], ["dev/nvidiactl"], {}, "cpu"),  # the control device is not a GPU
        (["jax_cuda12_plugin"], ["dev/nvidia0"], {}, "gpu"),
        (["jax_cuda13_plugin"], ["proc/driver/nvidia/gpus/0000:01:00.0"], {}, "gpu"),
        (["jax_plugins.xla_cuda12"], ["dev/nvidia3"], {}, "gpu"),
        (["jax_cuda12_plugin"], ["dev/nvidia0"], {"CUDA_VISIBLE_DEVICES": ""}, "cpu"),
        (["jax_cuda12_plugin"], ["dev/nvidia0"], {"CUDA_VISIBLE_DEVICES": "-1"}, "cpu"),
        (["jax_cuda12_plugin"], ["dev/nvidia0"], {"CUDA_VISIBLE_DEVICES": "1"}, "gpu"),
        (["jax_rocm7_plugin"], ["dev/kfd"], {}, "gpu"),
        (["jax_rocm7_plugin"], [], {}, "cpu"),
        (["libtpu"], ["dev/accel0"], {}, "tpu"),
        (["libtpu"], ["dev/vfio/0"], {}, "tpu"),
        (["libtpu"], ["dev/vfio/vfio"], {}, "cpu"),  # the VFIO control file is not a chip
        (["libtpu"], [], {}, "cpu"),
    ],
)
def test_plugins_count_only_with_their_device(tmp_path, plugins, files, environ, platform):
    got = expected_backend(environ, plugins=plugins, root=_machine(tmp_path, *files))
    assert got.platform == platform, got
    if plugins and platform == "cpu":
        assert "no device of theirs" in got.reason


def test_no_plugin_no_variable_is_the_cpu(tmp_path):
    got = expected_backend({}, plugins=[], root=tmp_path)
    assert got.platform == "cpu" and got.reason == "no accelerator plugin installed"


def test_nothing_of_jax_is_imported_or_started():
    """The decision must come before JAX starts: the launch package never imports JAX."""
    child = textwrap.dedent(
        """
        import json, sys
        from jaxnn.launch import configure_process, expected_backend, installed_plugins
        plugins = installed_plugins()
        backend = expected_backend()
        configure_process()
        print(json.dumps({"jax": sorted(m for m in sys.modules if m.split(".")[0] in
            ("jax", "jaxlib")), "plugins": plugins, "platform": backend.platform}))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["jax"] == [], got
    assert all(isinstance(p, str) for p in got["plugins"])
