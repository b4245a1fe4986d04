"""jaxnn/models/registry.py: get_model builds the class the config names (by class, for each
registered name and for import paths), registration and its hyperparameter section, the
sparse-embedding interface check, and model.dtype="auto" under each backend."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxnn.models import (
    BowClassifier,
    TransformerClassifier,
    compute_dtype,
    default_section,
    get_model,
    param,
    register,
    resolve,
    supports_sparse_embeddings,
)
from jaxnn.models import registry as registry_lib
from jaxnn.train.config import (
    ConfigError,
    base_config,
    check_override_keys,
    config_to_dict,
    validate_config,
)


@pytest.fixture(autouse=True)
def _private_registry(monkeypatch):
    """Models a test registers are gone after it."""
    monkeypatch.setattr(registry_lib, "_REGISTRY", dict(registry_lib._REGISTRY))


class PlainClassifier(nn.Module):
    """A model without the sparse-embedding interface (mean of embeddings -> linear head)."""

    vocab_size: int
    num_classes: int
    width: int = 8
    dtype: Any = None

    @nn.compact
    def __call__(self, tokens, mask, *, train):
        e = nn.Embed(self.vocab_size, self.width)(tokens) * mask[..., None]
        pooled = e.sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1)
        return nn.Dense(self.num_classes, dtype=self.dtype)(pooled).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class PlainConfig:
    width: int = param(8, ge=1, le=1024)


def _config(**model):
    config = base_config()
    for key, value in model.items():
        config.model[key] = value
    return config


def test_bow_is_built_from_the_config_by_class():
    config = _config(name="bow", embed_dim=12, bigram_buckets=64, pooling="sqrt", dropout=0.25)
    model = get_model(validate_config(config), vocab_size=30, num_classes=4)
    assert type(model) is BowClassifier
    assert (model.vocab_size, model.num_classes, model.embed_dim) == (30, 4, 12)
    assert (model.bigram_buckets, model.pooling, model.dropout_rate) == (64, "sqrt", 0.25)
    assert model.dtype is None


def test_transformer_is_built_from_the_config_by_class():
    config = _config(
        name="transformer",
        embed_dim=16,
        num_heads=2,
        num_layers=3,
        norm="rms",
        attention_dropout=0.1,
        pooling="first",
        dropout=0.2,
    )
    config.data.max_len = 40
    model = get_model(validate_config(config), vocab_size=30, num_classes=3)
    assert type(model) is TransformerClassifier
    assert (model.embed_dim, model.num_heads, model.num_layers, model.norm) == (16, 2, 3, "rms")
    assert (model.max_len, model.pooling, model.attention_dropout_rate) == (40, "first", 0.1)
    assert model.dropout_rate == 0.2


@pytest.mark.parametrize(
    ("path", "name", "cls"),
    [
        ("jaxnn.models.bow:BowClassifier", "bow", BowClassifier),
        ("jaxnn.models.transformer:TransformerClassifier", "transformer", TransformerClassifier),
    ],
)
def test_an_import_path_of_a_registered_class_uses_its_registration(path, name, cls):
    config = _config(name=path, embed_dim=12, num_heads=3)
    cfg = validate_config(config)
    assert resolve(cfg.model.name).name == name
    model = get_model(cfg, vocab_size=20, num_classes=2)
    assert type(model) is cls and model.embed_dim == 12


def test_an_import_path_of_an_unregistered_class_is_built_with_the_fields_it_has(
    tmp_path, monkeypatch
):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent("""
        import flax.linen as nn
        import jax.numpy as jnp

        class Tiny(nn.Module):
            vocab_size: int
            num_classes: int

            @nn.compact
            def __call__(self, tokens, mask, *, train):
                x = nn.Embed(self.vocab_size, 4)(tokens).sum(1)
                return nn.Dense(self.num_classes)(x)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = get_model(validate_config(_config(name="my_models:Tiny")), vocab_size=9, num_classes=2)
    assert type(model).__module__ == "my_models" and type(model).__name__ == "Tiny"
    assert (model.vocab_size, model.num_classes) == (9, 2)
    assert not supports_sparse_embeddings(model)


@pytest.mark.parametrize("name", ["no_such_model", "my_models_missing:Tiny", "jaxnn.models:Nope"])
def test_unknown_model_names_are_refused_by_name(name):
    with pytest.raises(ConfigError, match=rf"config\.model\.name='{name}'.*bow, transformer"):
        validate_config(_config(name=name))


def test_a_registered_model_has_its_own_section_checked_by_its_dataclass():
    register("plain", PlainClassifier, config_cls=PlainConfig)
    config = _config(name="plain")
    with config.unlocked():
        config.model.plain = default_section("plain")
    config.model.plain.width = 5
    cfg = validate_config(config)
    assert cfg.model.plain == PlainConfig(width=5)
    assert cfg.model["plain"] == PlainConfig(width=5)
    assert config_to_dict(cfg)["model"]["plain"] == {"width": 5}
    model = get_model(cfg, vocab_size=11, num_classes=3)
    assert type(model) is PlainClassifier and model.width == 5

    check_override_keys(config, ["--config.model.plain.width=7"])
    with pytest.raises(
        ConfigError, match=r"model\.plain\.widht.*allowed keys here: model\.plain\.width"
    ):
        check_override_keys(config, ["--config.model.plain.widht=7"])
    config.model.plain.width = 0
    with pytest.raises(ConfigError, match=r"config\.model\.plain\.width=0.*\[1, 1024\]"):
        validate_config(config)
    with config.unlocked():
        config.model.plain = {"widht": 3}
    with pytest.raises(ConfigError, match=r"config\.model\.plain\.widht=3.*unknown key"):
        validate_config(config)


def test_a_missing_section_takes_the_defaults_and_an_unknown_one_is_refused():
    register("plain", PlainClassifier, config_cls=PlainConfig)
    cfg = validate_config(_config(name="plain"))
    assert cfg.model.plain == PlainConfig()
    config = _config(name="bow")
    with config.unlocked():
        config.model.cnnn = {"kernel_size": 3}
    with pytest.raises(ConfigError, match=r"config\.model\.cnnn\.kernel_size=3.*unknown key"):
        validate_config(config)


def test_register_refuses_a_taken_name_a_non_dataclass_and_missing_fields():
    with pytest.raises(ValueError, match="already registered"):
        register("bow", PlainClassifier)
    with pytest.raises(TypeError, match="not a dataclass"):
        register("plain", PlainClassifier, config_cls=dict)

    @dataclasses.dataclass(frozen=True)
    class Wider:
        height: int = 3

    with pytest.raises(TypeError, match=r"no field\(s\) \['height'\]"):
        register("plain", PlainClassifier, config_cls=Wider)
    with pytest.raises(ValueError, match="without ':'"):
        register("a:b", PlainClassifier)


def test_a_builder_function_is_called_with_the_hyperparameters_and_the_context():
    calls = []

    def build(hp, **context):
        calls.append((hp, context))
        return PlainClassifier(context["vocab_size"], context["num_classes"], width=hp.width)

    register("built", build, config_cls=PlainConfig)
    config = _config(name="built", dropout=0.5)
    config.data.max_len = 33
    model = get_model(validate_config(config), vocab_size=7, num_classes=2)
    assert model.width == 8
    hp, context = calls[0]
    assert hp == PlainConfig()
    assert context == {
        "vocab_size": 7,
        "num_classes": 2,
        "max_len": 33,
        "dropout_rate": 0.5,
        "dtype": None,
    }


def test_the_sparse_interface_is_detected():
    bow = BowClassifier(vocab_size=5, num_classes=2)
    transformer = TransformerClassifier(vocab_size=5, num_classes=2, max_len=8)
    assert supports_sparse_embeddings(bow) and supports_sparse_embeddings(transformer)
    assert not supports_sparse_embeddings(PlainClassifier(vocab_size=5, num_classes=2))


@pytest.mark.parametrize(
    ("backend", "expected"), [("cpu", None), ("gpu", jnp.bfloat16), ("tpu", jnp.bfloat16)]
)
def test_dtype_auto_is_bfloat16_on_accelerators_and_float32_on_cpu(backend, expected):
    assert compute_dtype("auto", backend=backend) == (
        None if expected is None else jnp.dtype(expected)
    )
    assert compute_dtype("float32", backend=backend) is None
    assert compute_dtype("bfloat16", backend=backend) == jnp.dtype(jnp.bfloat16)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_dtype_auto_is_resolved_where_the_model_is_built(monkeypatch, backend):
    """get_model resolves "auto" with the backend JAX runs on; parameters stay float32."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    cfg = validate_config(_config(name="bow", dtype="auto"))
    assert cfg.model.dtype == "auto"  # the config keeps what was asked
    model = get_model(cfg, vocab_size=20, num_classes=3)
    assert model.dtype == (jnp.dtype(jnp.bfloat16) if backend == "gpu" else None)
    tokens = jnp.array([[1, 2, 3, 0]], jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), tokens, tokens > 0, train=False)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert model.apply(variables, tokens, tokens > 0, train=False).dtype == jnp.float32
