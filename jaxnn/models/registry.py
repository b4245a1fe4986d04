"""The model registry: a run config's ``model.name`` -> a flax module, with its hyperparameters.

A model is found by ``model.name``: a registered name ("bow", "transformer", or one a package
registers), or an import path ``"package.module:ClassName"`` (the module is imported; when it
registers the class, that registration is used). Registering a model::

    import dataclasses
    import flax.linen as nn
    import jaxnn.models
    from jaxnn.models import param

    @dataclasses.dataclass(frozen=True)
    class CnnConfig:                              # the model's hyperparameters: config.model.cnn
        kernel_size: int = param(3, ge=1)
        num_filters: int = param(64, ge=1)

    class CnnClassifier(nn.Module):
        vocab_size: int                           # filled from the data
        num_classes: int
        kernel_size: int = 3                      # filled from config.model.cnn
        num_filters: int = 64
        dropout_rate: float = 0.0                 # filled from config.model.dropout, if a field
        dtype: Any = None                         # filled from config.model.dtype, if a field

        def __call__(self, tokens, mask, *, train): ...   # [B, L] int32, [B, L] bool -> [B, C]

    jaxnn.models.register("cnn", CnnClassifier, config_cls=CnnConfig)

The config then says ``config.model.name = "cnn"`` (or the import path) and holds the
hyperparameters in their own section, ``config.model.cnn = jaxnn.models.default_section("cnn")``,
so ``--config.model.cnn.kernel_size=5`` works and a typo (``kernel_sise``) is refused by name.

The interface a model satisfies (`TextClassifier`):

    __call__(tokens int32 [B, L], mask bool [B, L], *, train: bool) -> logits float32 [B, C]

mask is True on real tokens and False on padding; a row may be all padding (a batch padded to
the global batch size), and its logits must be finite. Dropout draws from the "dropout" RNG
stream; running statistics go to the "batch_stats" collection.

The optional sparse-embedding interface (`SparseEmbeddingModel`, implemented by the built-ins):
with ``optim.sparse_embeddings`` the train step never forms a dense gradient of an embedding
table; it needs four methods:

    table_names() -> tuple[str, ...]        tables, each params[name]["embedding"] [V_name, D]
    feature_ids(tokens, mask) -> {name: (ids int32 [B, T'], mask bool [B, T'])}   (no params)
    lookup(features) -> {name: table[ids] [B, T', D]}
    classify(vectors, masks, *, train) -> logits [B, C]       (everything after the lookup)

with ``__call__ == classify(lookup(feature_ids(tokens, mask)), masks)``. A model without them
trains with dense updates (one log line says so): see `supports_sparse_embeddings`. A fifth
method is optional:

    classify_rows(rows, slots, masks, *, train, dropout_rate=None) -> logits [B, C]
        rows {name: [U, D]}, slots {name: int [B, T']} (any value where the mask is False)

``classify`` of ``rows[name][slots[name]]``, with the same dropout draws (so a step with and
without ``table_rows`` gives the same numbers): when the train step works on a batch's
distinct rows (``table_rows``) it calls this instead of expanding the rows to [B, T', D]
itself, so a model can pool without forming the looked-up vectors (the bag-of-words model
does; it sums in float32, so under a bfloat16 or float16 dtype the two agree to rounding).

Built-ins: "bow" and "transformer" are registered below the same way; their hyperparameters are
the keys of ``config.model`` itself (the names shared with the tuner's search
space), which is what ``section=""`` means.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnn.models.bow import POOLINGS as BOW_POOLINGS
from jaxnn.models.bow import BowClassifier
from jaxnn.models.hyperparameters import ConfigError, check_fields, fail, field_names, param
from jaxnn.models.transformer import TransformerClassifier
from jaxnn.nn.normalization import NORMS
from jaxnn.nn.pooling import POOLS
from jaxnn.ops.activations import ACTIVATIONS
from jaxnn.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS

__all__ = [
    "DTYPES",
    "BowConfig",
    "ModelSpec",
    "SparseEmbeddingModel",
    "TextClassifier",
    "TransformerConfig",
    "compute_dtype",
    "default_section",
    "get_model",
    "model_names",
    "register",
    "resolve",
    "supports_sparse_embeddings",
]

log = logging.getLogger(__name__)

# model.dtype: "auto" = bfloat16 on GPU/TPU, float32 on CPU (`compute_dtype`)
DTYPES = ("float32", "bfloat16", "float16", "auto")

# What get_model passes to a model class, when the class has a field of that name.
_CONTEXT_FIELDS = ("vocab_size", "num_classes", "max_len", "dropout_rate", "dtype")


@runtime_checkable
class TextClassifier(Protocol):
    """What every registered model is: tokens [B, L] int32, mask [B, L] bool -> logits [B, C]."""

    def __call__(self, tokens: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array: ...


@runtime_checkable
class SparseEmbeddingModel(TextClassifier, Protocol):
    """The optional split of a model around its embedding lookups (see the module docstring)."""

    def table_names(self) -> tuple[str, ...]: ...

    def feature_ids(self, tokens: jax.Array, mask: jax.Array) -> dict[str, tuple]: ...

    def lookup(self, features: dict[str, tuple]) -> dict[str, jax.Array]: ...

    def classify(
        self, vectors: dict[str, jax.Array], masks: dict[str, jax.Array], *, train: bool
    ) -> jax.Array: ...


SPARSE_METHODS = ("table_names", "feature_ids", "lookup", "classify")


def supports_sparse_embeddings(model: Any) -> bool:
    """True when ``model`` has the four methods of the sparse-embedding interface
    (``table_names``, ``feature_ids``, ``lookup``, ``classify``)."""
    return all(callable(getattr(model, name, None)) for name in SPARSE_METHODS)


def compute_dtype(name: str, *, backend: str | None = None) -> Any:
    """``model.dtype`` -> the dtype a model computes in; None for float32 (no casts at all).

    "auto" is bfloat16 on a GPU or TPU (``backend``, default `jax.default_backend()`) and
    float32 on the CPU, where bfloat16 matmuls are emulated and slower. Parameters and optimizer
    state are float32 whatever the compute dtype (jaxnn.train.precision).
    """
    if name == "auto":
        backend = backend or jax.default_backend()
        return jnp.dtype(jnp.bfloat16) if backend in ("gpu", "cuda", "rocm", "tpu") else None
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r} is not allowed; allowed: {', '.join(DTYPES)}")
    return None if name == "float32" else jnp.dtype(name)


# ----------------------------------------------------------------------------------------------
# The built-ins' hyperparameters (keys of config.model itself)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BowConfig:
    """`BowClassifier`'s hyperparameters (config.model.<field>)."""

    embed_dim: int = param(64, ge=1, doc="D")
    hidden_size: int = param(0, ge=0, doc="F of the head's hidden layers (0 = linear head)")
    num_hidden_layers: int = param(1, ge=0, doc="hidden layers of the head when hidden_size > 0")
    activation: str = param("relu", choices=tuple(ACTIVATIONS))
    bigram_buckets: int = param(0, ge=0, doc="rows of the hashed bigram table (0 = none)")
    trigram_buckets: int = param(0, ge=0, doc="rows of the hashed trigram table (0 = none)")
    binary_features: bool = param(False, doc="each distinct n-gram once per text (NBSVM)")
    pooling: str = param("mean", choices=BOW_POOLINGS, doc="mean, or sqrt = sum / sqrt(K)")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """`TransformerClassifier`'s hyperparameters (config.model.<field>)."""

    embed_dim: int = param(64, ge=1, doc="D, a multiple of num_heads")
    num_layers: int = param(2, ge=0)
    num_heads: int = param(4, ge=1)
    mlp_dim: int = param(256, ge=1)
    activation: str = param("relu", choices=tuple(ACTIVATIONS))
    norm: str = param("layer", choices=tuple(NORMS))
    pooling: str = param("mean", choices=tuple(POOLS))
    attention_impl: str = param("auto", choices=ATTENTION_IMPLEMENTATIONS)
    # dropout on the attention weights, apart from model.dropout (as in Flax's examples)
    attention_dropout: float = param(0.0, ge=0, lt=1)

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            fail(
                "num_heads",
                self.num_heads,
                f"allowed: a divisor of model.embed_dim={self.embed_dim}",
            )


def _build_transformer(
    hp: TransformerConfig,
    *,
    vocab_size: int,
    num_classes: int,
    max_len: int,
    dropout_rate: float,
    dtype: Any,
) -> nn.Module:
    return TransformerClassifier(
        vocab_size=vocab_size,
        num_classes=num_classes,
        max_len=max_len,
        embed_dim=hp.embed_dim,
        num_layers=hp.num_layers,
        num_heads=hp.num_heads,
        mlp_dim=hp.mlp_dim,
        dropout_rate=dropout_rate,
        attention_dropout_rate=hp.attention_dropout,
        activation=hp.activation,
        norm=hp.norm,
        pooling=hp.pooling,
        attention_impl=hp.attention_impl,
        dtype=dtype,
    )


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes:
      name: the ``model.name`` that selects it.
      build: ``build(hyperparameters, *, vocab_size, num_classes, max_len, dropout_rate, dtype)
        -> flax module``; ``hyperparameters`` is a ``config_cls`` instance (None without one).
      config_cls: a dataclass of the model's hyperparameters (fields made with `param`), or None.
      section: where its hyperparameters live: ``config.model.<section>``; "" = the keys of
        ``config.model`` itself (the built-ins).
      model_cls: the module class, when registered by class (for `resolve` by import path).
    """

    name: str
    build: Callable[..., nn.Module]
    config_cls: type | None
    section: str
    model_cls: type | None = None

    def hyperparameters(self, model_section: Mapping[str, Any]) -> Any:
        """The checked ``config_cls`` instance from a run config's ``model`` section."""
        if self.config_cls is None:
            return None
        if self.section:
            values = model_section.get(self.section, None) or {}
            if dataclasses.is_dataclass(values):
                values = dataclasses.asdict(values)
            return check_fields(self.config_cls, values, f"model.{self.section}")
        values = {k: model_section[k] for k in field_names(self.config_cls) if k in model_section}
        return check_fields(self.config_cls, values, "model")


_REGISTRY: dict[str, ModelSpec] = {}


def _class_builder(cls: type, config_cls: type | None) -> Callable[..., nn.Module]:
    """build() for a module class: context fields it has, plus the hyperparameters by name."""
    fields = set(inspect.signature(cls).parameters)
    if config_cls is not None:
        missing = [n for n in field_names(config_cls) if n not in fields]
        if missing:
            raise TypeError(
                f"{cls.__name__} has no field(s) {missing} of {config_cls.__name__}; a class "
                "registered with a config_cls takes every hyperparameter as a field (or register "
                "a builder function instead)"
            )

    def build(hp: Any, **context: Any) -> nn.Module:
        kwargs = {k: v for k, v in context.items() if k in fields}
        if hp is not None:
            kwargs.update({n: getattr(hp, n) for n in field_names(type(hp))})
        return cls(**kwargs)

    return build


def _source_file(cls: type) -> str | None:
    """The real path of the file that defines ``cls`` (from its methods' code, which works for
    a module loaded by path and not kept in sys.modules, as config files are)."""
    for value in vars(cls).values():
        code = getattr(value, "__code__", None)
        if code is not None:
            return os.path.realpath(code.co_filename)
    try:
        return os.path.realpath(inspect.getfile(cls))
    except (TypeError, OSError):
        return None


def _same_definition(a: type | None, b: type | None) -> bool:
    """The same class from the same source, e.g. a module executed twice (a config file that
    registers its model is loaded by path and then imported)."""
    if a is None or b is None or a.__qualname__ != b.__qualname__:
        return False
    source = _source_file(a)
    return source is not None and source == _source_file(b)


def register(
    name: str,
    builder_or_class: type | Callable[..., nn.Module],
    *,
    config_cls: type | None = None,
    section: str | None = None,
    model_cls: type | None = None,
) -> ModelSpec:
    """Make ``model.name = name`` build this model.

    Args:
      name: the model's name in configs (an identifier-like string without ":").
      builder_or_class: a flax module class, built with the fields it has among vocab_size,
        num_classes, max_len, dropout_rate (config.model.dropout), dtype (config.model.dtype
        resolved by `compute_dtype`) plus every field of ``config_cls``; or a function
        ``build(hyperparameters, *, vocab_size, num_classes, max_len, dropout_rate, dtype)``.
      config_cls: a frozen dataclass of the model's hyperparameters (types, defaults and ranges
        via `param`), validated by name; None when the model has none.
      section: the config section of the hyperparameters, ``config.model.<section>``; default
        ``name``. "" reads them from ``config.model`` itself (the built-ins do).
      model_cls: with a builder function, the class it returns, so that an import path naming
        that class finds this registration.

    Returns:
      The `ModelSpec`. Registering a name again raises ValueError, unless it is the same class
      from the same source (a module executed twice), which replaces the entry.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(
            f"model name {name!r} is not allowed; allowed: a non-empty name without ':'"
        )
    if config_cls is not None and not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config_cls={config_cls!r} is not a dataclass")
    section = name if section is None else section
    if section and not section.isidentifier():
        raise ValueError(f"section={section!r} is not allowed; allowed: a Python identifier")
    if inspect.isclass(builder_or_class):
        spec = ModelSpec(
            name,
            _class_builder(builder_or_class, config_cls),
            config_cls,
            section,
            builder_or_class,
        )
    elif callable(builder_or_class):
        spec = ModelSpec(name, builder_or_class, config_cls, section, model_cls)
    else:
        raise TypeError(f"builder_or_class={builder_or_class!r} is neither a class nor callable")
    old = _REGISTRY.get(name)
    if old is not None and not _same_definition(old.model_cls, spec.model_cls):
        raise ValueError(
            f"model name {name!r} is already registered ({old.model_cls or old.build})"
        )
    _REGISTRY[name] = spec
    return spec


def model_names() -> tuple[str, ...]:
    """The registered model names."""
    return tuple(_REGISTRY)


def resolve(name: str) -> ModelSpec:
    """The `ModelSpec` of ``model.name``: a registered name, or ``"package.module:Class"``
    (imported; its registration is used when the module registers the class, else the class is
    registered under the import path with no hyperparameters of its own).

    Raises:
      ConfigError: naming ``model.name``, the registered names and the import-path form.
    """
    if not isinstance(name, str):
        _unknown_model(name, "")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        _unknown_model(name, "")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        _unknown_model(name, f" (cannot import {module_name!r}: {err})")
    cls = getattr(module, attr, None)
    if cls is None:
        _unknown_model(name, f" (module {module_name!r} has no {attr!r})")
    for spec in list(_REGISTRY.values()):
        if spec.model_cls is cls:
            return spec
        if _same_definition(spec.model_cls, cls):
            # the same file executed twice (loaded as a config file, then imported): the class
            # of the import path is the one to build, with its module's config class
            config_cls = spec.config_cls
            if config_cls is not None:
                config_cls = getattr(module, config_cls.__name__, config_cls)
            _REGISTRY[spec.name] = ModelSpec(
                spec.name, _class_builder(cls, config_cls), config_cls, spec.section, cls
            )
            return _REGISTRY[spec.name]
    if not inspect.isclass(cls):
        _unknown_model(name, f" ({name} is not a class)")
    spec = ModelSpec(name, _class_builder(cls, None), None, "", cls)
    _REGISTRY[name] = spec
    return spec


def _unknown_model(name: object, why: str) -> NoReturn:
    raise ConfigError(
        f"config.model.name={name!r} is not allowed{why}; allowed: "
        f"{', '.join(_REGISTRY)}, a name registered with jaxnn.models.register, or an import "
        "path 'package.module:ClassName'"
    )


def default_section(name: str) -> Any:
    """``config.model.<section>`` with every hyperparameter's default, as an
    ml_collections.ConfigDict, for a config file of a registered model (or import path)."""
    import ml_collections

    spec = resolve(name)
    if spec.config_cls is None or not spec.section:
        raise ValueError(f"model {name!r} has no hyperparameter section of its own")
    return ml_collections.ConfigDict(dataclasses.asdict(spec.config_cls()))


def get_model(config: Mapping[str, Any], *, vocab_size: int, num_classes: int) -> nn.Module:
    """The model a run config names (``config.model``, ``config.data.max_len``).

    The compute dtype is resolved here, once (``model.dtype = "auto"``: `compute_dtype`).

    Args:
      config: a run config (a validated `jaxnn.train.config.RunConfig`, a ConfigDict or a
        nested dict).
      vocab_size: V, from the vocabulary built on the training split.
      num_classes: C, from the corpus's label names.

    Raises:
      ConfigError: naming ``model.name`` when no model has that name, or a hyperparameter key
        or value the model's config refuses.
    """
    model = config["model"]
    spec = resolve(model["name"])
    return spec.build(
        spec.hyperparameters(model),
        vocab_size=vocab_size,
        num_classes=num_classes,
        max_len=config["data"]["max_len"],
        dropout_rate=model["dropout"],
        dtype=compute_dtype(model["dtype"]),
    )


register("bow", BowClassifier, config_cls=BowConfig, section="")
register(
    "transformer",
    _build_transformer,
    config_cls=TransformerConfig,
    section="",
    model_cls=TransformerClassifier,
)
