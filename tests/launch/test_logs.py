"""jaxnn.launch.logs: third-party INFO chatter below WARNING unless verbose; jaxnn's own kept."""

from __future__ import annotations

import logging

import pytest

from jaxnn.launch.logs import THIRD_PARTY_LOGGERS, quiet_third_party_logs


@pytest.fixture(autouse=True)
def restore_levels():
    names = (*THIRD_PARTY_LOGGERS, "jaxnn")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_quiet_and_verbose(caplog):
    logging.getLogger("jaxnn").setLevel(logging.INFO)
    quiet_third_party_logs()
    with caplog.at_level(logging.INFO):  # the root logger at INFO, as train.py sets it
        logging.getLogger("orbax.checkpoint").info("saving step 3")
        logging.getLogger("absl").info("finished")
        logging.getLogger("absl").warning("disk nearly full")
        logging.getLogger("jaxnn.train").info("epoch 1")
    assert [r.getMessage() for r in caplog.records] == ["disk nearly full", "epoch 1"]
    caplog.clear()
    quiet_third_party_logs(verbose=True)
    with caplog.at_level(logging.INFO):
        logging.getLogger("orbax.checkpoint").info("saving step 3")
    assert [r.getMessage() for r in caplog.records] == ["saving step 3"]
