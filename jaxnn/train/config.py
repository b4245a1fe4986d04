"""The run configuration: its complete schema, validated once into a frozen, typed `RunConfig`.

A config file in configs/ returns an ``ml_collections.ConfigDict`` from ``get_config()``,
starting from `base_config`, the complete schema: every key a run may set, with the value used
when a config file does not set it. The keys of the tunable hyperparameters (the names the tuner
uses, jaxnn.tune.space) are the same for every model:

    optim.learning_rate   model.dropout     model.hidden_size   train.batch_size
    optim.weight_decay    model.embed_dim   optim.optimizer     model.activation

The entry point calls `validate_config` once; it returns a `RunConfig`, a tree of frozen
dataclasses (`DataConfig`, `ModelConfig`, `OptimConfig`, `TrainConfig`, `MeshConfig`) that the
rest of the code receives and reads as ``cfg.optim.learning_rate`` (or, as a read-only mapping,
``cfg["optim"]["learning_rate"]``). Calling it again with a `RunConfig` returns it unchanged.
A bad config (an unknown key, a learning rate <= 0, a dropout outside [0, 1), an unknown
optimizer ...) fails there with a `ConfigError` naming the key, the value and what is allowed.

Each section's fields, with their types, defaults and allowed values, are the dataclasses below
(`jaxnn.models.param`); the lists of allowed values live with the code that implements them
(activations: jaxnn.ops.activations; attention implementations: jaxnn.ops.attention; norms and
poolings: jaxnn.nn; models: the registry of jaxnn.models; built-in corpora: jaxnn.data).

Models: ``model.name`` is a registered model or an import path "package.module:Class"
(jaxnn.models.registry). The built-ins' hyperparameters are keys of ``config.model`` itself; a
registered model's are in their own section, ``config.model.<section>`` (e.g. model.cnn),
checked by the model's dataclass, so ``--config.model.cnn.kernel_size=5`` works and a typo is
refused by name.

Process settings (the CPU allocator, vector width, device count) are not part of the run config:
they are flags of the entry points.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ml_collections

from jaxnn.data import BUILTIN_CORPORA
from jaxnn.models import registry as model_registry
from jaxnn.models.hyperparameters import ConfigError, check_fields, fail, field_names, param
from jaxnn.models.registry import DTYPES
from jaxnn.nn.normalization import NORMS as _NORM_MODULES
from jaxnn.nn.pooling import POOLS
from jaxnn.ops.activations import ACTIVATIONS as _ACTIVATION_FUNCTIONS
from jaxnn.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLS

__all__ = [
    "ACTIVATIONS",
    "ATTENTION_IMPLS",
    "CORPORA",
    "DTYPES",
    "NORMS",
    "OPTIMIZERS",
    "POOLINGS",
    "ConfigError",
    "DataConfig",
    "MeshConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "base_config",
    "check_override_keys",
    "config_from_file",
    "config_to_dict",
    "corpus_options",
    "model_names",
    "validate_config",
    "weight_decay_mode",
]

# Re-exported from their homes (the code that implements them), for the tuner's search space.
ACTIVATIONS = tuple(_ACTIVATION_FUNCTIONS)
NORMS = tuple(_NORM_MODULES)
POOLINGS = tuple(POOLS)
CORPORA = tuple(BUILTIN_CORPORA)  # or a path to a file/folder (see jaxnn.data.corpora)

# Lists whose one home is here: the run's own options, implemented by jaxnn.train.
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
WEIGHT_DECAY_MODES = ("auto", "l2", "decoupled")
SELECT_METRICS = ("macro_f1", "accuracy")

# The defaults of a user's delimited file (jaxnn.data.corpora's reader options).
_DEFAULT_COLUMNS = {"text_column": "text", "label_column": "label"}


def model_names() -> tuple[str, ...]:
    """The registered model names (jaxnn.models.register adds to them)."""
    return model_registry.model_names()


class _Section(Mapping):
    """A frozen dataclass that also reads as a mapping: ``s.key == s["key"]``."""

    def _keys(self) -> tuple[str, ...]:
        return field_names(type(self))

    def __getitem__(self, key: str) -> Any:
        if key in self._keys():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def to_dict(self) -> dict:
        """A plain, JSON-serialisable nested dict."""
        return config_to_dict(self)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """``config.data``: which texts, how they are split, encoded and batched."""

    corpus: str = param("imdb", doc="imdb, bbc_news, or a path to a .csv/.tsv/.jsonl/folder")
    split_seed: int = param(0, ge=0, doc="the seeded train/validation/test split")
    max_len: int = param(512, ge=1, doc="L: tokens kept per text (the first L)")
    min_freq: int = param(2, ge=1, doc="vocabulary: words seen at least this often in train")
    max_vocab_size: int = param(0, ge=0, doc="0 = no cap; else V including <pad> and <unk>")
    sort_pool: int = param(16, ge=0, doc="group batches by length within pools of k*B (0 = off)")
    smallest_bucket: int = param(16, ge=1, doc="bucket lengths: powers of two up to max_len")
    unk_warn_threshold: float = param(0.05, ge=0, le=1, doc="warn above this unknown ratio")
    prefetch: int = param(2, ge=1, doc="batches prepared ahead on a background thread")
    # A file of your own (a path in corpus): its columns and delimiter
    text_column: str = param("text", doc="column (or JSON key) of the texts")
    label_column: str = param("label", doc="column (or JSON key) of the labels")
    split_column: str = param("", doc="column of train/validation/test ('' = a seeded split)")
    delimiter: str = param("", doc="one character; '' = from the suffix (.csv ',', .tsv tab)")

    def __post_init__(self) -> None:
        corpus = self.corpus
        if not corpus:
            fail("corpus", corpus, f"allowed: {', '.join(CORPORA)} or a path to a corpus file")
        if corpus not in CORPORA and not os.path.exists(os.path.expanduser(corpus)):
            fail(
                "corpus",
                corpus,
                f"allowed: {', '.join(CORPORA)} or an existing path to a corpus file or folder",
            )
        if 0 < self.max_vocab_size < 3:
            fail("max_vocab_size", self.max_vocab_size, "allowed: 0 (no cap) or >= 3")
        if len(self.delimiter) > 1:
            fail("delimiter", self.delimiter, "allowed: one character, or '' (from the suffix)")
        for key in ("text_column", "label_column"):
            if not getattr(self, key):
                fail(key, getattr(self, key), "allowed: a column name")
        if corpus in CORPORA:
            for key, value in corpus_options(self).items():
                fail(
                    key,
                    value,
                    f"allowed: the default for the built-in corpus {corpus!r}; the column and "
                    "delimiter options apply to a file of your own",
                )


def corpus_options(data: Mapping[str, Any]) -> dict[str, str]:
    """The reader options of ``config.data`` for jaxnn.data's ``load_corpus`` / ``prepare``:
    only those that differ from the reader's defaults (text_column "text", label_column "label",
    no split column, the delimiter from the suffix), so a built-in corpus gets none."""
    out = {}
    for key, default in _DEFAULT_COLUMNS.items():
        if data.get(key, default) != default:
            out[key] = data[key]
    for key in ("split_column", "delimiter"):
        if data.get(key, ""):
            out[key] = data[key]
    return out


def _builtin_model_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """The fields of the built-ins' hyperparameter classes (section ""), first one wins; where
    two built-ins allow different values (pooling), only the type is checked here and the
    selected model checks the value."""
    out: dict[str, tuple[Any, dataclasses.Field]] = {}

    def constraints(f: dataclasses.Field) -> dict:
        return {k: v for k, v in f.metadata.items() if k != "doc"}

    for name in model_registry.model_names():
        spec = model_registry.resolve(name)
        if spec.section or spec.config_cls is None:
            continue
        hints = typing.get_type_hints(spec.config_cls)
        for f in dataclasses.fields(spec.config_cls):
            if f.name not in out:
                out[f.name] = (hints[f.name], f)
            elif constraints(out[f.name][1]) != constraints(f):
                out[f.name] = (hints[f.name], dataclasses.field(default=out[f.name][1].default))
    fields = []
    for key, (annotation, f) in out.items():
        fields.append((key, annotation, dataclasses.field(default=f.default, metadata=f.metadata)))
    return fields


def _model_getattr(self: Any, name: str) -> Any:
    sections = self.__dict__.get("sections")
    if sections is not None and not name.startswith("__") and name in sections:
        return sections[name]
    raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


def _model_keys(self: Any) -> tuple[str, ...]:
    return tuple(n for n in field_names(type(self)) if n != "sections") + tuple(self.sections)


def _model_getitem(self: Any, key: str) -> Any:
    if key in self.sections:
        return self.sections[key]
    if key != "sections" and key in field_names(type(self)):
        return getattr(self, key)
    raise KeyError(key)


def _hyperparameters(self: Any) -> Any:
    """The selected model's hyperparameters: an instance of its registered config class."""
    return model_registry.resolve(self.name).hyperparameters(self)


# config.model: name, dtype, dropout, then the built-ins' hyperparameters (BowConfig and
# TransformerConfig of jaxnn.models.registry), then `sections`: a registered model's own
# section (config.model.<section>) as its checked dataclass, read as cfg.model.<section>.
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig",
    [
        ("name", str, param("bow", doc="a registered model or 'package.module:Class'")),
        (
            "dtype",
            str,
            param("float32", choices=DTYPES, doc="compute dtype; auto = bf16 on GPU/TPU"),
        ),
        ("dropout", float, param(0.0, ge=0, lt=1, doc="rate p in [0, 1)")),
        *_builtin_model_fields(),
        ("sections", Mapping, dataclasses.field(default_factory=dict, compare=True)),
    ],
    bases=(_Section,),
    frozen=True,
    namespace={
        "__getattr__": _model_getattr,
        "_keys": _model_keys,
        "__getitem__": _model_getitem,
        "hyperparameters": _hyperparameters,
        "__hash__": None,
        "__doc__": "``config.model``: the model's name, compute dtype, dropout rate and "
        "hyperparameters (see the module docstring).",
    },
)
ModelConfig.__module__ = __name__


@dataclasses.dataclass(frozen=True)
class OptimConfig(_Section):
    """``config.optim``: optimizer, schedule, weight decay, clipping, loss scaling."""

    optimizer: str = param("adam", choices=OPTIMIZERS, doc="adam, adamw, sgd (with momentum)")
    learning_rate: float = param(1e-3, gt=0, doc="peak learning rate")
    momentum: float = param(0.9, ge=0, lt=1, doc="sgd only")
    b1: float = param(0.9, ge=0, lt=1, doc="adam/adamw")
    b2: float = param(0.999, ge=0, lt=1)
    eps: float = param(1e-8, gt=0)
    weight_decay: float = param(0.0, ge=0, doc="lambda")
    # auto: adam and sgd put lambda * sum w^2 into the loss (l2), adamw decays decoupled
    weight_decay_mode: str = param("auto", choices=WEIGHT_DECAY_MODES)
    grad_clip_norm: float = param(0.0, ge=0, doc="clip the global gradient norm (0 = off)")
    schedule: str = param("cosine", choices=SCHEDULES, doc="after warmup: cosine or constant")
    warmup_steps: int = param(0, ge=0)
    end_lr_fraction: float = param(0.0, ge=0, le=1, doc="cosine ends at learning_rate * this")
    # lazy sparse Adam rows for embedding tables; a model without the sparse-embedding interface
    # (jaxnn.models.registry) trains with dense updates
    sparse_embeddings: bool = param(True)
    # model.dtype = "float16" only: dynamic loss scale s_0, and finite steps before s doubles
    initial_loss_scale: float = param(2.0**15, ge=1)
    loss_scale_period: int = param(2000, ge=1)

    def __post_init__(self) -> None:
        if self.optimizer == "adamw" and self.weight_decay_mode == "l2":
            fail(
                "weight_decay_mode",
                "l2",
                "adamw decays decoupled by definition: use 'auto' or 'decoupled', or "
                "optimizer=adam for the l2 penalty in the loss",
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    """``config.train``: batches, epochs, early stopping, logging and checkpoints."""

    batch_size: int = param(64, ge=1, doc="global batch B (divided over the devices)")
    eval_batch_size: int = param(256, ge=1)
    num_epochs: int = param(5, ge=1)
    patience: int = param(0, ge=0, doc="early stop after this many epochs without gain (0 = off)")
    select_metric: str = param("macro_f1", choices=SELECT_METRICS, doc="best checkpoint, stop")
    log_every_steps: int = param(50, ge=1, doc="host sync for the progress bar, finite check")
    checkpoint_every_steps: int = param(0, ge=0, doc="extra mid-epoch checkpoints (0 = none)")
    keep_checkpoints: int = param(2, ge=1, doc="latest N kept (the best one separately)")
    max_steps_per_epoch: int = param(0, ge=0, doc="0 = a full epoch; else stop each epoch early")
    progress_bar: bool = param(True)


@dataclasses.dataclass(frozen=True)
class MeshConfig(_Section):
    """``config.mesh``: > 1 fsdp = a 2-D device mesh (data, fsdp) with parameters and optimizer
    state split in fsdp parts (ZeRO-3 / FSDP style) instead of replicated; divides the devices."""

    fsdp: int = param(1, ge=1)


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "mesh": MeshConfig,
}


@dataclasses.dataclass(frozen=True)
class RunConfig(_Section):
    """A validated run config: frozen, typed, complete (`validate_config` builds it).

    ``seed`` draws the parameter init, dropout masks and batch order (the corpus split is
    ``data.split_seed``).
    """

    seed: int
    data: DataConfig
    model: Any  # ModelConfig
    optim: OptimConfig
    train: TrainConfig
    mesh: MeshConfig


def base_config() -> ml_collections.ConfigDict:
    """Every key of a run config with its default value (the dataclasses above say what each
    means and allows). A registered model's own section is added by the config file that uses
    it: ``config.model.cnn = jaxnn.models.default_section("cnn")``."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    for name, cls in _SECTIONS.items():
        config[name] = ml_collections.ConfigDict(config_to_dict(cls()))
    return config


def config_from_file(path: str | Path) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file, so one config can start from another.

    configs/imdb_transformer_gpu.py, for example, could start from configs/imdb_transformer.py:
    ``config = config_from_file(Path(__file__).with_name("imdb_transformer.py"))``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_jaxnn_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import does (dataclasses in the file need it)
    spec.loader.exec_module(module)
    return module.get_config()


def _plain(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {n: _plain(getattr(value, n)) for n in field_names(type(value))}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: RunConfig | ml_collections.ConfigDict | Mapping) -> dict:
    """A plain, JSON-serialisable nested dict (tuples become lists) of any form of config."""
    return json.loads(json.dumps(_plain(config), sort_keys=True, default=list))


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _fail_unknown_key(key: str, value: object, keys: list[str], *, override: bool = False) -> None:
    """Raise ConfigError for ``key``, listing the known keys of its section (or the sections)."""
    section = key.rsplit(".", 1)[0] if "." in key else ""
    allowed = sorted(k for k in keys if section and k.startswith(section + "."))
    hint = ""
    parts = key.split(".")
    if override and len(parts) == 3 and parts[0] == "model" and not allowed:
        hint = (
            f" (a model's own section must be in the config file: config.model.{parts[1]} = "
            f"jaxnn.models.default_section(<model name>))"
        )
    if not allowed:
        allowed = sorted({k.split(".")[0] for k in keys})
    raise ConfigError(
        f"config.{key}={value!r} is not allowed; unknown key{hint}; allowed keys here: "
        f"{', '.join(allowed)}"
    )


def check_override_keys(config: ml_collections.ConfigDict, args: list[str]) -> None:
    """Refuse ``--config.<key>=value`` flags whose key ``config`` lacks, naming the known keys.

    ml_collections' config_flags cannot add a key and fails with a bare AttributeError; this
    runs first, on the same config file, so the user sees which key is wrong and what exists.
    The keys of a model's own section (``model.cnn.kernel_size``) are accepted when the file
    holds that section.
    """
    schema = _flatten(config_to_dict(config))
    for i, arg in enumerate(args):
        if not arg.startswith("--config."):
            continue
        key, has_value, value = arg[len("--config.") :].partition("=")
        if not has_value and i + 1 < len(args):  # "--config.key value"
            value = args[i + 1]
        if key not in schema:
            _fail_unknown_key(key, value, list(schema), override=True)


def _check_section(cls: type, name: str, given: Any) -> Any:
    if not isinstance(given, Mapping):
        raise ConfigError(f"config.{name}={given!r} is not allowed; allowed: a section (dict)")
    missing = sorted(set(field_names(cls)) - set(given))
    if missing:
        raise ConfigError(
            f"config is missing keys {[f'{name}.{k}' for k in missing]}; build configs from "
            "jaxnn.train.config.base_config()"
        )
    return check_fields(cls, given, name)


def _check_model(given: Any) -> Any:
    """ModelConfig from ``config.model``: the common keys, the built-ins' keys, and each
    registered model's own section, checked by the model's dataclass."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"config.model={given!r} is not allowed; allowed: a section (dict)")
    spec = model_registry.resolve(given.get("name"))  # may import "package.module:Class"
    sections_by_name = {
        s.section: s for s in map(model_registry.resolve, model_registry.model_names()) if s.section
    }
    flat = {k: v for k, v in given.items() if not isinstance(v, Mapping)}
    nested = {k: v for k, v in given.items() if isinstance(v, Mapping)}
    sections = {}
    for key, values in nested.items():
        if key not in sections_by_name:
            _fail_unknown_key(
                f"model.{key}.{next(iter(values), '?')}",
                next(iter(values.values()), None),
                [f"model.{k}" for k in field_names(ModelConfig) if k != "sections"]
                + [f"model.{s}.*" for s in sections_by_name],
            )
        sections[key] = sections_by_name[key].hyperparameters(given)
    if spec.section and spec.config_cls is not None and spec.section not in sections:
        sections[spec.section] = spec.hyperparameters(given)  # the defaults
    model = _check_section(ModelConfig, "model", {**flat, "sections": {}})
    spec.hyperparameters(model)  # the selected built-in checks its own values (pooling ...)
    return dataclasses.replace(model, sections=sections)


def validate_config(config: RunConfig | ml_collections.ConfigDict | Mapping) -> RunConfig:
    """Check every key and value of ``config``; returns the frozen, typed `RunConfig`.

    Raises `ConfigError` (a ValueError) naming the key, its value and what is allowed for: a key
    not in `base_config` (or a missing one), a learning rate <= 0, a dropout outside [0, 1), a
    batch size < 1, an unknown optimizer / activation / model / norm / pooling / corpus, a
    model hyperparameter its model refuses, and other out-of-range values. Loads no data and
    compiles nothing (a model named by import path is imported). A `RunConfig` is returned as
    it is: validating twice costs nothing.
    """
    if isinstance(config, RunConfig):
        return config
    given = config_to_dict(config)
    unknown = sorted(set(given) - {"seed", *_SECTIONS})
    if unknown:
        value = given[unknown[0]]
        key = unknown[0]
        if isinstance(value, Mapping) and value:
            key, value = f"{key}.{next(iter(value))}", next(iter(value.values()))
        _fail_unknown_key(key, value, ["seed", *(f"{s}.*" for s in _SECTIONS)])
    missing = sorted({"seed", *_SECTIONS} - set(given))
    if missing:
        raise ConfigError(
            f"config is missing keys {missing}; build configs from jaxnn.train.config.base_config()"
        )
    sections = {
        name: _check_model(given[name])
        if cls is ModelConfig
        else _check_section(cls, name, given[name])
        for name, cls in _SECTIONS.items()
    }
    seed = given["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"config.seed={seed!r} is not allowed; allowed: an int >= 0")
    return RunConfig(seed=seed, **sections)


def weight_decay_mode(optim: Mapping) -> str:
    """The effective decay form: 'l2' (penalty in the loss) or 'decoupled' (AdamW style)."""
    mode = optim["weight_decay_mode"]
    if mode != "auto":
        return mode
    return "decoupled" if optim["optimizer"] == "adamw" else "l2"
