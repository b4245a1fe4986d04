"""jaxnn.testing.faults' environment and driver: each fault the environment names is one the
driver reads, nothing is left over from the caller's environment, and the source tree is the
one asked for (the subprocess tests in test_faults.py rely on all three)."""

from __future__ import annotations

import os

import pytest

from jaxnn.testing import FAULTS, driver_command, fault_env
from jaxnn.testing.faults import DRIVER, ROOT


def test_each_fault_becomes_a_variable_the_driver_reads():
    env = fault_env({}, **{name: 7 for name in FAULTS})
    for name in FAULTS:
        variable = f"JAXNN_{name.upper()}"
        assert env[variable] == "7"
        assert f'os.environ.get("{variable}")' in DRIVER, variable


def test_the_tree_is_importable_first_and_located():
    env = fault_env({"PYTHONPATH": "/elsewhere"})
    assert env["JAXNN_ROOT"] == str(ROOT)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]
    for base in ({}, {"PYTHONPATH": ""}):  # no empty entry (the working directory)
        assert fault_env(base)["PYTHONPATH"] == str(ROOT)


def test_another_checkout_can_be_driven_and_a_tree_without_train_py_is_refused(tmp_path):
    (tmp_path / "train.py").write_text("")
    assert fault_env({}, root=tmp_path)["JAXNN_ROOT"] == str(tmp_path.resolve())
    with pytest.raises(FileNotFoundError, match=r"runs train.py of a source checkout"):
        fault_env({}, root=tmp_path / "site-packages")


def test_a_fault_in_the_callers_environment_does_not_leak_into_a_clean_run():
    base = {f"JAXNN_{name.upper()}": "1" for name in FAULTS}
    env = fault_env(base)
    assert not [name for name in FAULTS if f"JAXNN_{name.upper()}" in env]


def test_an_unknown_fault_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown faults \['kill_at_epoch'\]; allowed: "):
        fault_env({}, kill_at_epoch=1)


def test_the_command_runs_the_driver_with_the_arguments():
    command = driver_command(["--workdir=/w"])
    assert command[1] == "-c" and "runpy.run_path" in command[2]
    assert command[3:] == ["--workdir=/w"]
