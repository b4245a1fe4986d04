"""Train a text classifier and report validation and test accuracy and macro F1.

    python train.py                                      configs/default.py into runs/<new>
    python train.py --config=configs/imdb_bow.py --workdir=runs/x --config.optim.learning_rate=3e-4
    python train.py --config=configs/bbc_news.py --workdir=runs/bbc --overwrite

The same command on the same workdir resumes from the newest checkpoint; a finished run just
prints its results. A workdir holding a different config is refused (--overwrite starts over).

Every local device is used (the global batch is split over them). Several hosts: run the same
command on each host with a shared --workdir, joined by jax.distributed:

    python train.py --config=... --workdir=/shared/run \
        --coordinator_address=host0:1234 --num_processes=2 --process_id=<0 or 1>

(or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; on
SLURM, Open MPI, Cloud TPU pods and Kubernetes JAX detects them itself). Only process 0 logs and
writes metrics, plots and results; every process writes its shards of the checkpoints.

Flow (all in jaxnn.train.loop.train_and_evaluate):
  config (a ConfigDict from configs/*.py with dotted overrides) -> validate (bad input fails here)
  -> data: corpus, vocabulary from train, int32 batches (jaxnn.data)
  -> model (jaxnn.models) -> jitted train/eval steps over every local device (jaxnn.train.step)
  -> epochs with validation, early stopping, checkpoints -> the best checkpoint on test, once
  -> workdir: metrics.jsonl, tensorboard/, config.json, vocab.json, learning_curves.png,
     results.json
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parent


def _config_file(argv: list[str]) -> Path:
    """The --config file named on the command line (configs/default.py when none is)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
        if arg == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
    return ROOT / "configs" / "default.py"


def refuse_unknown_overrides(argv: list[str]) -> int:
    """0, or 2 after naming a --config.<key> override that the config file does not have."""
    from jaxnn.train.config import ConfigError, check_override_keys, config_from_file

    path = _config_file(argv)
    if not path.is_file():  # config_flags reports a missing file itself
        return 0
    try:
        check_override_keys(config_from_file(path), argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# config_flags parses the default config file and its overrides while defining the flag, and
# cannot add a key: refuse an unknown --config.<key> with a clear message before that happens.
if __name__ == "__main__" and (_code := refuse_unknown_overrides(sys.argv)):
    sys.exit(_code)

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(ROOT / "configs" / "default.py"), "Run config file (get_config())."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (default: a new runs/<config>-<time> folder)."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete the workdir's previous run first.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "jax.distributed.initialize: auto = when the flags below (or JAX_COORDINATOR_ADDRESS, "
    "JAX_NUM_PROCESSES, JAX_PROCESS_ID) are given or JAX detects a cluster; on; off.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-host runs)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout",
    300,
    "Seconds to wait for the coordinator / the other processes before failing.",
)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("absl", "jax._src.xla_bridge", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from jaxnn.cpu_devices import configure_cpu_devices, cpu_devices
    from jaxnn.cpu_vector_width import configure_cpu_vector_width, cpu_vector_width
    from jaxnn.host_memory import configure_host_allocator, host_allocator

    # $JAXNN_HOST_ALLOCATOR / $JAXNN_CPU_VECTOR_WIDTH / $JAXNN_CPU_DEVICES or the config's,
    # before JAX starts
    try:
        configure_host_allocator(config=_CONFIG.value)
        configure_cpu_vector_width(config=_CONFIG.value)
        configure_cpu_devices(config=_CONFIG.value)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    import jax

    from jaxnn.train import (
        ConfigError,
        ConfigMismatchError,
        NonFiniteLossError,
        train_and_evaluate,
    )
    from jaxnn.train.distributed import DistributedInitError, initialize_distributed

    try:  # before anything asks JAX for its devices
        initialize_distributed(
            _COORDINATOR.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            mode=_DISTRIBUTED.value,
            timeout_s=_INIT_TIMEOUT.value,
        )
    except (ConfigError, DistributedInitError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if jax.process_index() != 0:  # process 0 speaks for the run
        logging.getLogger().setLevel(logging.WARNING)

    config = _CONFIG.value
    workdir = _WORKDIR.value
    if workdir is None:
        name = Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
        workdir = str(ROOT / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    log = logging.getLogger("jaxnn.train")
    log.info("workdir: %s", workdir)
    log.info("host allocator: %(mode)s (%(detail)s)", host_allocator())
    log.info("CPU vector width: %(setting)s (%(detail)s)", cpu_vector_width())
    log.info("CPU devices: %(setting)s -> %(devices)d (%(detail)s)", cpu_devices())
    try:
        results = train_and_evaluate(config, workdir, overwrite=_OVERWRITE.value)
    except (ConfigError, ConfigMismatchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if jax.process_index() != 0:
        return 0
    test, val = results["test"], results["val"]
    print(
        f"validation (best epoch {results['best_epoch']}): accuracy {val['accuracy']:.4f}, "
        f"macro F1 {val['macro_f1']:.4f}\n"
        f"test: accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}, "
        f"unknown-word ratio {test['unk_ratio']:.2%}\n"
        f"wall time {results['wall_time_s']:.1f} s; results in {workdir}/results.json"
    )
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
