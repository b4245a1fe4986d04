"""jaxnn/train/distributed.py: the data-parallel mesh, on 2 forced CPU devices in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    import jax, numpy as np
    from jaxnn.train.config import ConfigError
    from jaxnn.train.distributed import make_mesh, describe_mesh, shard_batch
    from jaxnn.train.loop import Trainer, fit, load_data

    assert len(jax.devices()) == 2, jax.devices()
    spec = importlib.util.spec_from_file_location("tiny", sys.argv[1])
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    config = module.get_config()
    config.data.corpus = sys.argv[2]
    config.data.max_len = 48
    config.data.smallest_bucket = 48
    config.data.min_freq = 1
    config.model.dropout = 0.0
    config.optim.learning_rate = 0.05
    config.train.batch_size = 16
    config.train.eval_batch_size = 64
    config.train.num_epochs = 1
    config.train.max_steps_per_epoch = 8
    data = load_data(config)
    two = make_mesh()
    print("MESH", describe_mesh(two))
    host = Trainer(config, data, mesh=two).train_batches.make_batch(np.arange(16))
    shards = shard_batch(host, two)["tokens"].addressable_shards
    print("SHARDS", len(shards), shards[0].data.shape)
    a = fit(config, data, mesh=two)
    b = fit(config, data, mesh=make_mesh(jax.devices()[:1]))
    for x, y in zip(jax.tree.leaves(a.best_variables), jax.tree.leaves(b.best_variables)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    print("SAME", a.best["accuracy"], b.best["accuracy"])
    config.train.batch_size = 15
    try:
        fit(config, data, mesh=two)
    except ConfigError as err:
        print("REFUSED", err)
    """
)


def test_two_devices_shard_the_batch_and_match_one_device(synthetic_corpus):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT / "configs" / "tiny.py"), str(synthetic_corpus)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "MESH 2 devices (cpu)" in out
    assert "SHARDS 2 (8, 48)" in out  # each device holds half of the global batch
    assert "SAME" in out
    assert "REFUSED train.batch_size=15 must be divisible by the number of devices (2" in out


@pytest.mark.parametrize("size", [1, 3])
def test_one_device_mesh_accepts_any_batch(size):
    from jaxnn.train.distributed import check_divisible, make_mesh

    check_divisible("train.batch_size", size, make_mesh())
