r"""Train a text classifier and report validation and test accuracy and macro F1.

    python train.py                                      configs/default.py into runs/<new>
    python train.py --config=configs/imdb_bow.py --workdir=runs/x --config.optim.learning_rate=3e-4
    python train.py --config=configs/bbc_news.py --workdir=runs/bbc --overwrite

The same command on the same workdir resumes from the newest checkpoint; a finished run just
prints its results. A workdir holding a different config is refused (--overwrite starts over).

Settings of the process, not of the experiment (jaxnn.launch; applied on CPU runs only, before
JAX starts; ignored with a warning on a GPU or TPU; $JAXNN_HOST_ALLOCATOR, $JAXNN_CPU_VECTOR_WIDTH
and $JAXNN_CPU_DEVICES set them when the flag is not given):

    --cpu_devices=1|N|cores     XLA:CPU devices of the process; "cores" = one per core, the batch
                                split over them. The transformer on a CPU runs data parallel that
                                way: python train.py --config=configs/imdb_transformer.py \
                                    --cpu_devices=cores --host_allocator=keep
    --host_allocator=system|keep    "keep" reuses freed host blocks (steps with large
                                intermediates, e.g. the transformer's attention)
    --cpu_vector_width=auto|xla|128|256|512    XLA:CPU's vector width ("auto": 512 on AMD AVX-512)
    --verbose                   absl/orbax/JAX INFO lines and full tracebacks

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

import difflib
import logging
import sys
import time
import traceback
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from jaxnn.launch import configure_process, quiet_third_party_logs
from jaxnn.launch.flags import define_process_flags

ROOT = Path(__file__).resolve().parent


def _config_file(argv: list[str]) -> Path:
    """The --config file named on the command line (configs/default.py when none is), without
    ml_collections' ``path:argument`` suffix."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            name = arg.split("=", 1)[1]
            break
        if arg == "--config" and i + 1 < len(argv):
            name = argv[i + 1]
            break
    else:
        return ROOT / "configs" / "default.py"
    path = Path(name)
    if not path.is_file() and ":" in name and Path(name.rsplit(":", 1)[0]).is_file():
        path = Path(name.rsplit(":", 1)[0])  # configs/x.py:argument
    return path


def _missing_config_message(path: Path) -> str:
    """One line for a --config file that does not exist: a close shipped config, or the list."""
    shipped = {p.name: p for p in sorted((ROOT / "configs").glob("*.py"))}
    cwd = Path.cwd()
    shown = {
        name: p.relative_to(cwd) if p.is_relative_to(cwd) else p for name, p in shipped.items()
    }
    close = difflib.get_close_matches(path.name, list(shipped), n=1)
    where = "" if path.is_absolute() else f" (relative to {cwd})"
    if close:
        hint = f"did you mean {shown[close[0]]}?"
    else:
        hint = f"shipped configs: {', '.join(str(p) for p in shown.values())}"
    return f"config file {path} not found{where}; {hint}"


def _load_error_message(path: Path, err: BaseException) -> str:
    """One line for a config file that raised: the exception and the file's line."""
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(err.__traceback__)
        if Path(frame.filename).resolve() == path.resolve()
    ]
    where = f"{path}, line {lines[-1]}" if lines else str(path)
    return f"config file {where} failed to load: {type(err).__name__}: {err}"


def check_command_line(argv: list[str]) -> int:
    """0, or 2 after one ``error:`` line: the --config file is missing, raises when loaded, or
    lacks the key of a --config.<key> override. With --verbose, the traceback comes first."""
    from jaxnn.train.config import ConfigError, check_override_keys, config_from_file

    path = _config_file(argv)
    if not path.is_file():
        print(f"error: {_missing_config_message(path)}", file=sys.stderr)
        return 2
    try:
        config = config_from_file(path)
    except Exception as err:  # the file's own error, whatever it is
        if "--verbose" in argv:
            traceback.print_exc()
        print(f"error: {_load_error_message(path, err)}", file=sys.stderr)
        return 2
    try:
        check_override_keys(config, argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# config_flags parses the default config file and its overrides while defining the flag, fails
# with a long traceback on a missing or broken file, and cannot add a key: check all of that
# first and say what is wrong in one line.
if __name__ == "__main__" and (_code := check_command_line(sys.argv)):
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
_PROCESS_FLAGS = define_process_flags()  # --host_allocator, --cpu_vector_width, --cpu_devices
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Keep absl/orbax/JAX INFO logs and print tracebacks with errors."
)


def _error(err: BaseException, code: int) -> int:
    """One ``error:`` line (after the traceback with --verbose); returns ``code``."""
    if _VERBOSE.value:
        traceback.print_exception(err)
    print(f"error: {err}", file=sys.stderr)
    return code


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_third_party_logs(_VERBOSE.value)
    train = _CONFIG.value.get("train") or {}
    batch_sizes = [train.get(k) for k in ("batch_size", "eval_batch_size")]
    try:  # before JAX starts; CPU runs only
        configure_process(
            **_PROCESS_FLAGS(), batch_sizes=[b for b in batch_sizes if isinstance(b, int)]
        )
    except ValueError as err:
        return _error(err, 2)

    import jax

    from jaxnn.data import DataError
    from jaxnn.train import ConfigError, NonFiniteLossError, RunError, train_and_evaluate
    from jaxnn.train.distributed import DistributedInitError, initialize_distributed

    try:  # before anything asks JAX for its devices
        initialize_distributed(
            _COORDINATOR.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            mode=_DISTRIBUTED.value,
            timeout_s=_INIT_TIMEOUT.value,
            config=_CONFIG.value,
        )
    except (ConfigError, DistributedInitError) as err:
        return _error(err, 2)
    if jax.process_index() != 0:  # process 0 speaks for the run
        logging.getLogger().setLevel(logging.WARNING)

    config = _CONFIG.value
    workdir = _WORKDIR.value
    if workdir is None:
        name = Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
        workdir = str(ROOT / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    log = logging.getLogger("jaxnn.train")
    log.info("workdir: %s", workdir)
    try:
        results = train_and_evaluate(
            config, workdir, overwrite=_OVERWRITE.value, verbose=_VERBOSE.value
        )
    except ConfigError as err:
        return _error(err, 2)
    except (RunError, DataError, NonFiniteLossError) as err:  # 2 input, 1 machine, 3 non-finite
        return _error(err, err.exit_code)
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
