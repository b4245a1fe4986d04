"""jaxnn.testing.faults' environment: the faults it names, and nothing left over from the
caller's environment (the subprocess tests in test_faults.py rely on both)."""

from __future__ import annotations

import pytest

from jaxnn.testing import FAULTS, driver_command, fault_env
from jaxnn.testing.faults import ROOT


def test_each_fault_becomes_its_variable_and_the_tree_is_importable():
    env = fault_env({"PYTHONPATH": "/elsewhere"}, kill_at_step=5, kill_when="best/*tmp*")
    assert env["JAXNN_KILL_AT_STEP"] == "5"
    assert env["JAXNN_KILL_WHEN"] == "best/*tmp*"
    assert env["JAXNN_ROOT"] == str(ROOT)
    assert env["PYTHONPATH"].split(":") == [str(ROOT), "/elsewhere"]
    assert (ROOT / "train.py").is_file()


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
