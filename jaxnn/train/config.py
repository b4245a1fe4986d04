"""The run configuration: its complete schema, and validation before any data or compile.

A config is an ``ml_collections.ConfigDict`` returned by ``get_config()`` of a file in configs/.
`base_config` below is the complete schema: every key a run may set, with the value used when a
config file does not set it. A config file starts from it and overrides what it needs, so the
keys (and the study guide's names for the hyperparameters, §12) are the same for every model:

    optim.learning_rate   model.dropout     model.hidden_size   train.batch_size
    optim.weight_decay    model.embed_dim   optim.optimizer     model.activation

`validate_config` rejects a bad config (an unknown key, a learning rate <= 0, a dropout outside
[0, 1), an unknown optimizer ...) with an error naming the key, the value and what is allowed.
`train_and_evaluate` calls it before loading any data or compiling anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from jaxnn.cpu_devices import ALLOWED as CPU_DEVICES_ALLOWED
from jaxnn.cpu_devices import resolve as resolve_cpu_devices
from jaxnn.cpu_vector_width import SETTINGS as CPU_VECTOR_WIDTHS
from jaxnn.host_memory import MODES as HOST_ALLOCATOR_MODES

__all__ = [
    "ACTIVATIONS",
    "ATTENTION_IMPLS",
    "CORPORA",
    "MODELS",
    "NORMS",
    "OPTIMIZERS",
    "POOLINGS",
    "ConfigError",
    "base_config",
    "config_to_dict",
    "validate_config",
]

MODELS = ("bow", "transformer")
OPTIMIZERS = ("adam", "adamw", "sgd")
ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid")
NORMS = ("layer", "batch", "rms")
POOLINGS = ("mean", "max", "first")
BOW_POOLINGS = ("mean", "sqrt")
ATTENTION_IMPLS = ("auto", "reference", "chunked", "xla", "cudnn", "pallas")
CORPORA = ("imdb", "bbc_news")  # or a path to a file/folder (see jaxnn.data.corpora)
SCHEDULES = ("cosine", "constant")
WEIGHT_DECAY_MODES = ("auto", "l2", "decoupled")
SELECT_METRICS = ("macro_f1", "accuracy")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config key has a value that is not allowed (the message names key, value, allowed)."""


def base_config() -> ml_collections.ConfigDict:
    """Every key of a run config with its default value (see the comments for meanings)."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # parameter init, dropout masks, batch order (corpus split: data.split_seed)

    config.data = ml_collections.ConfigDict()
    config.data.corpus = "imdb"  # "imdb", "bbc_news", or a path to a .csv/.tsv/.jsonl/folder
    config.data.split_seed = 0  # the seeded train/validation/test split of jaxnn.data
    config.data.max_len = 512  # L: tokens kept per text (the first L)
    config.data.min_freq = 2  # vocabulary: words seen at least this often in train
    config.data.max_vocab_size = 0  # 0 = no cap; else V including <pad> and <unk>
    config.data.sort_pool = 16  # group batches by length within pools of k*B (0 = off)
    config.data.smallest_bucket = 16  # bucket lengths: powers of two from this up to max_len
    config.data.unk_warn_threshold = 0.05  # warn when a split's unknown-word ratio is above
    config.data.prefetch = 2  # batches prepared ahead on a background thread

    config.model = ml_collections.ConfigDict()
    config.model.name = "bow"  # "bow" or "transformer"
    config.model.embed_dim = 64  # D
    config.model.hidden_size = 0  # F of the MLP head's hidden layers (0 = linear head)
    config.model.num_hidden_layers = 1  # hidden layers of the head when hidden_size > 0
    config.model.activation = "relu"  # relu, gelu, tanh, sigmoid
    config.model.dropout = 0.0  # rate p in [0, 1)
    # transformer: dropout on the attention weights, apart from model.dropout (as in Flax's
    # examples); > 0 forces the "reference" attention, which materializes the T x S scores
    config.model.attention_dropout = 0.0
    # compute dtype: float32, bfloat16 or float16 (float16 with dynamic loss scaling); parameters,
    # optimizer state, softmax, normalization statistics, logits and loss stay float32
    config.model.dtype = "float32"
    # bow only
    config.model.bigram_buckets = 0  # rows of the hashed bigram table (0 = no bigrams)
    config.model.trigram_buckets = 0  # rows of the hashed trigram table (0 = no trigrams)
    config.model.binary_features = False  # each distinct n-gram once per text (NBSVM-style)
    # transformer only
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.mlp_dim = 256
    config.model.norm = "layer"  # layer, batch, rms
    config.model.pooling = "mean"  # transformer: mean, max, first; bow: mean, sqrt (sum/sqrt(K))
    config.model.attention_impl = "auto"

    config.optim = ml_collections.ConfigDict()
    config.optim.optimizer = "adam"  # adam, adamw, sgd (with momentum)
    config.optim.learning_rate = 1e-3  # peak learning rate
    config.optim.momentum = 0.9  # sgd only
    config.optim.b1 = 0.9  # adam/adamw
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.weight_decay = 0.0  # lambda
    # auto: adam and sgd put lambda * sum w^2 into the loss (l2), adamw decays decoupled
    config.optim.weight_decay_mode = "auto"
    config.optim.grad_clip_norm = 0.0  # clip the global gradient norm to this (0 = off)
    config.optim.schedule = "cosine"  # cosine decay after warmup, or constant after warmup
    config.optim.warmup_steps = 0
    config.optim.end_lr_fraction = 0.0  # cosine ends at learning_rate * this
    config.optim.sparse_embeddings = True  # lazy sparse Adam rows for embedding tables
    # model.dtype = "float16" only: dynamic loss scale s_0, and finite steps before s doubles
    config.optim.initial_loss_scale = 2.0**15
    config.optim.loss_scale_period = 2000

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64  # global batch B (divided over the devices)
    config.train.eval_batch_size = 256
    config.train.num_epochs = 5
    config.train.patience = 0  # early stopping after this many epochs without gain (0 = off)
    config.train.select_metric = "macro_f1"  # validation metric for best checkpoint / stopping
    config.train.log_every_steps = 50  # host sync for the progress bar and the finite check
    config.train.checkpoint_every_steps = 0  # extra mid-epoch checkpoints (0 = epoch ends)
    config.train.keep_checkpoints = 2  # latest N checkpoints kept (the best one separately)
    config.train.max_steps_per_epoch = 0  # 0 = a full epoch; else stop each epoch early
    config.train.progress_bar = True
    # host memory of XLA:CPU (jaxnn.host_memory): "keep" reuses freed blocks (faster steps with
    # large intermediates), "system" = glibc's defaults, "" = $JAXNN_HOST_ALLOCATOR (default
    # system). Process-wide, applied before JAX starts; $JAXNN_HOST_ALLOCATOR, when set, wins.
    # It changes speed only, so a resumed run may use another value.
    config.train.host_allocator = ""
    # vector width of XLA:CPU's own kernels (jaxnn.cpu_vector_width): "auto" (512 on AMD CPUs
    # with AVX-512, else XLA's default), "xla" (XLA's default), "128", "256", "512". Process-wide
    # (XLA_FLAGS), applied before JAX starts; $JAXNN_CPU_VECTOR_WIDTH, when set, wins. The bow
    # step is 5-10 % faster at 512 on a Zen 5 EPYC. A resumed run may use another value.
    config.train.cpu_vector_width = "auto"
    # XLA:CPU devices of the process (jaxnn.cpu_devices): "1", a whole number, or "cores" (one
    # per core, fewer where the batch sizes do not divide). Several make the step data parallel
    # over the cores, which keeps both busy through attention (XLA:CPU runs a batched matmul
    # on one thread). Process-wide (XLA_FLAGS), applied before JAX starts, by train.py and
    # benchmarks/train.py; $JAXNN_CPU_DEVICES, when set, wins. No effect on GPU or TPU. A
    # resumed run may use another value (the gradient sum is only reordered).
    config.train.cpu_devices = "1"

    config.mesh = ml_collections.ConfigDict()
    # > 1: a 2-D device mesh (data, fsdp); parameters and optimizer state split in fsdp parts
    # (ZeRO-3 / FSDP style) instead of replicated. Must divide the number of devices.
    config.mesh.fsdp = 1
    return config


def config_from_file(path: str | Path) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, so one config can start from another.

    configs/imdb_bow.py, for example, is configs/default.py with more epochs:
    ``config = config_from_file(Path(__file__).with_name("default.py"))``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_jaxnn_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _fail_unknown_key(key: str, value: object, schema: Mapping[str, Any]) -> None:
    """Raise ConfigError for ``key``, listing the known keys of its section (or the sections)."""
    section = key.split(".")[0]
    allowed = sorted(k for k in schema if k.startswith(section + "."))
    if not allowed:
        allowed = sorted({k.split(".")[0] for k in schema})
    _fail(key, value, f"unknown key; allowed keys here: {', '.join(allowed)}")


def check_override_keys(config: ml_collections.ConfigDict, args: list[str]) -> None:
    """Refuse ``--config.<key>=value`` flags whose key ``config`` lacks, naming the known keys.

    ml_collections' config_flags cannot add a key and fails with a bare AttributeError; this
    runs first, on the same config file, so the user sees which key is wrong and what exists.
    """
    schema = _flatten(config_to_dict(config))
    for i, arg in enumerate(args):
        if not arg.startswith("--config."):
            continue
        key, has_value, value = arg[len("--config.") :].partition("=")
        if not has_value and i + 1 < len(args):  # "--config.key value"
            value = args[i + 1]
        if key not in schema:
            _fail_unknown_key(key, value, schema)


def config_to_dict(config: ml_collections.ConfigDict | Mapping) -> dict:
    """A plain, JSON-serialisable nested dict (tuples become lists)."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    return json.loads(json.dumps(dict(config), sort_keys=True, default=list))


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _fail(key: str, value: object, allowed: str) -> None:
    raise ConfigError(f"config.{key}={value!r} is not allowed; {allowed}")


def _check_choice(flat: dict, key: str, choices: tuple[str, ...]) -> None:
    if flat[key] not in choices:
        _fail(key, flat[key], f"allowed: {', '.join(choices)}")


def _check_int(flat: dict, key: str, minimum: int) -> None:
    value = flat[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, value, f"allowed: an int >= {minimum}")


def _check_number(
    flat: dict, key: str, low: float, high: float, *, low_open: bool, high_open: bool
):
    value = flat[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        _fail(key, value, f"allowed: a number in {interval}")


def validate_config(config: ml_collections.ConfigDict | Mapping) -> dict:
    """Check every key and value of ``config``; returns it as a plain nested dict.

    Raises `ConfigError` (a ValueError) naming the key, its value and what is allowed for: a key
    not in `base_config` (or a missing one), a learning rate <= 0, a dropout outside [0, 1), a
    batch size < 1, an unknown optimizer / activation / model / norm / pooling / corpus, and
    other out-of-range values. Pure: loads nothing, compiles nothing.
    """
    given = config_to_dict(config)
    schema = _flatten(config_to_dict(base_config()))
    flat = _flatten(given)
    for key in sorted(set(flat) - set(schema)):
        _fail_unknown_key(key, flat[key], schema)
    missing = sorted(set(schema) - set(flat))
    if missing:
        raise ConfigError(
            f"config is missing keys {missing}; build configs from jaxnn.train.config.base_config()"
        )

    corpus = flat["data.corpus"]
    if not isinstance(corpus, str) or not corpus:
        _fail("data.corpus", corpus, f"allowed: {', '.join(CORPORA)} or a path to a corpus file")
    if corpus not in CORPORA and not os.path.exists(os.path.expanduser(corpus)):
        _fail(
            "data.corpus",
            corpus,
            f"allowed: {', '.join(CORPORA)} or an existing path to a corpus file or folder",
        )
    _check_int(flat, "seed", 0)
    _check_int(flat, "data.split_seed", 0)
    _check_int(flat, "data.max_len", 1)
    _check_int(flat, "data.min_freq", 1)
    _check_int(flat, "data.max_vocab_size", 0)
    if 0 < flat["data.max_vocab_size"] < 3:
        _fail("data.max_vocab_size", flat["data.max_vocab_size"], "allowed: 0 (no cap) or >= 3")
    _check_int(flat, "data.sort_pool", 0)
    _check_int(flat, "data.smallest_bucket", 1)
    _check_int(flat, "data.prefetch", 1)
    _check_number(flat, "data.unk_warn_threshold", 0, 1, low_open=False, high_open=False)

    _check_choice(flat, "model.name", MODELS)
    _check_int(flat, "model.embed_dim", 1)
    _check_int(flat, "model.hidden_size", 0)
    _check_int(flat, "model.num_hidden_layers", 0)
    _check_choice(flat, "model.activation", ACTIVATIONS)
    _check_number(flat, "model.dropout", 0, 1, low_open=False, high_open=True)
    _check_number(flat, "model.attention_dropout", 0, 1, low_open=False, high_open=True)
    _check_choice(flat, "model.dtype", DTYPES)
    _check_int(flat, "model.bigram_buckets", 0)
    _check_int(flat, "model.trigram_buckets", 0)
    if not isinstance(flat["model.binary_features"], bool):
        _fail("model.binary_features", flat["model.binary_features"], "allowed: True, False")
    _check_int(flat, "model.num_layers", 0)
    _check_int(flat, "model.num_heads", 1)
    _check_int(flat, "model.mlp_dim", 1)
    _check_choice(flat, "model.norm", NORMS)
    if flat["model.name"] == "bow":
        _check_choice(flat, "model.pooling", BOW_POOLINGS)
    else:
        _check_choice(flat, "model.pooling", POOLINGS)
    _check_choice(flat, "model.attention_impl", ATTENTION_IMPLS)
    if flat["model.name"] == "transformer" and flat["model.embed_dim"] % flat["model.num_heads"]:
        _fail(
            "model.num_heads",
            flat["model.num_heads"],
            f"allowed: a divisor of model.embed_dim={flat['model.embed_dim']}",
        )

    _check_choice(flat, "optim.optimizer", OPTIMIZERS)
    _check_number(flat, "optim.learning_rate", 0, float("inf"), low_open=True, high_open=True)
    _check_number(flat, "optim.momentum", 0, 1, low_open=False, high_open=True)
    _check_number(flat, "optim.b1", 0, 1, low_open=False, high_open=True)
    _check_number(flat, "optim.b2", 0, 1, low_open=False, high_open=True)
    _check_number(flat, "optim.eps", 0, float("inf"), low_open=True, high_open=True)
    _check_number(flat, "optim.weight_decay", 0, float("inf"), low_open=False, high_open=True)
    _check_choice(flat, "optim.weight_decay_mode", WEIGHT_DECAY_MODES)
    if flat["optim.optimizer"] == "adamw" and flat["optim.weight_decay_mode"] == "l2":
        _fail(
            "optim.weight_decay_mode",
            "l2",
            "adamw decays decoupled by definition: use 'auto' or 'decoupled', or optimizer=adam "
            "for the l2 penalty in the loss",
        )
    _check_number(flat, "optim.grad_clip_norm", 0, float("inf"), low_open=False, high_open=True)
    _check_choice(flat, "optim.schedule", SCHEDULES)
    _check_int(flat, "optim.warmup_steps", 0)
    _check_number(flat, "optim.end_lr_fraction", 0, 1, low_open=False, high_open=False)
    if not isinstance(flat["optim.sparse_embeddings"], bool):
        _fail("optim.sparse_embeddings", flat["optim.sparse_embeddings"], "allowed: True, False")

    _check_int(flat, "train.batch_size", 1)
    _check_int(flat, "train.eval_batch_size", 1)
    _check_int(flat, "train.num_epochs", 1)
    _check_int(flat, "train.patience", 0)
    _check_choice(flat, "train.select_metric", SELECT_METRICS)
    _check_int(flat, "train.log_every_steps", 1)
    _check_int(flat, "train.checkpoint_every_steps", 0)
    _check_int(flat, "train.keep_checkpoints", 1)
    _check_int(flat, "train.max_steps_per_epoch", 0)
    if not isinstance(flat["train.progress_bar"], bool):
        _fail("train.progress_bar", flat["train.progress_bar"], "allowed: True, False")
    if flat["train.host_allocator"] not in ("", *HOST_ALLOCATOR_MODES):
        _fail(
            "train.host_allocator",
            flat["train.host_allocator"],
            f"allowed: {', '.join(map(repr, HOST_ALLOCATOR_MODES))}, or '' "
            "($JAXNN_HOST_ALLOCATOR, default system)",
        )
    _check_choice(flat, "train.cpu_vector_width", CPU_VECTOR_WIDTHS)
    try:
        resolve_cpu_devices(flat["train.cpu_devices"], cores=1)
    except ValueError:
        _fail("train.cpu_devices", flat["train.cpu_devices"], CPU_DEVICES_ALLOWED)
    _check_number(flat, "optim.initial_loss_scale", 1, float("inf"), low_open=False, high_open=True)
    _check_int(flat, "optim.loss_scale_period", 1)
    _check_int(flat, "mesh.fsdp", 1)
    return given


def weight_decay_mode(optim: Mapping) -> str:
    """The effective decay form: 'l2' (penalty in the loss) or 'decoupled' (AdamW style)."""
    mode = optim["weight_decay_mode"]
    if mode != "auto":
        return mode
    return "decoupled" if optim["optimizer"] == "adamw" else "l2"
