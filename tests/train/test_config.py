"""jaxnn/train/config.py: the schema, every shipped config, and bad input named clearly."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jaxnn.train import config as config_lib
from jaxnn.train.config import ConfigError, base_config, validate_config

from .conftest import ROOT, load_config_file

CONFIG_NAMES = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")


def test_the_shipped_configs_exist():
    assert {"default", "imdb_bow", "imdb_transformer", "bbc_news", "tiny"} <= set(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_shipped_config_is_valid(name):
    config = load_config_file(name).to_dict()
    for tool_section in ("tune", "analysis"):  # the tuner's and the analysis's own keys
        config.pop(tool_section, None)
    out = validate_config(config)
    assert isinstance(out, config_lib.RunConfig)
    assert out.model.name in config_lib.model_names()


def test_tuned_hyperparameter_names_exist():
    config = base_config()
    for path in [
        "optim.learning_rate",
        "model.dropout",
        "model.hidden_size",
        "train.batch_size",
        "optim.weight_decay",
        "model.embed_dim",
        "optim.optimizer",
        "model.activation",
    ]:
        section, key = path.split(".")
        assert key in config[section], path


def _with(path: str, value):
    config = base_config()
    section, key = path.split(".")
    with config.unlocked():
        config[section][key] = value
    return config


@pytest.mark.parametrize(
    ("path", "value", "allowed"),
    [
        ("optim.learning_rate", 0.0, "(0"),
        ("optim.learning_rate", -1e-3, "(0"),
        ("model.dropout", 1.0, "[0, 1)"),
        ("model.dropout", -0.1, "[0, 1)"),
        ("model.attention_dropout", 1.0, "[0, 1)"),
        ("train.batch_size", 0, ">= 1"),
        ("optim.optimizer", "rmsprop", "adam, adamw, sgd"),
        ("model.activation", "swish", "relu, gelu, gelu_tanh, tanh, sigmoid"),
        ("model.name", "no_such_model", "bow, transformer"),
        ("model.dtype", "float64", "float32, bfloat16, float16, auto"),
        ("data.delimiter", ";;", "one character"),
        ("data.text_column", "sentence", "apply to a file of your own"),  # imdb is built in
        ("data.corpus", "no_such_corpus", "imdb, bbc_news"),
        ("model.pooling", "sum", "mean, sqrt"),  # base_config's model is bow
        ("model.trigram_buckets", -1, ">= 0"),
    ],
)
def test_bad_value_names_key_value_and_allowed(path, value, allowed):
    with pytest.raises(ConfigError) as info:
        validate_config(_with(path, value))
    message = str(info.value)
    assert f"config.{path}={value!r}" in message
    assert allowed in message


@pytest.mark.parametrize(
    ("model", "value", "allowed"),
    [("transformer", "sqrt", "mean, max, first"), ("bow", "max", "mean, sqrt")],
)
def test_pooling_choices_depend_on_the_model(model, value, allowed):
    config = _with("model.pooling", value)
    config.model.name = model
    with pytest.raises(ConfigError, match=rf"config\.model\.pooling='{value}'.*allowed: {allowed}"):
        validate_config(config)


def test_non_bool_binary_features_is_refused():
    """ConfigDict already refuses the type change; a plain mapping reaches our own check."""
    config = base_config().to_dict()
    config["model"]["binary_features"] = 1
    with pytest.raises(ConfigError, match=r"config\.model\.binary_features=1.*True, False"):
        validate_config(config)


def test_unknown_key_is_refused_with_the_allowed_keys():
    config = base_config()
    with config.unlocked():
        config.optim.learnin_rate = 0.1
    with pytest.raises(
        ConfigError, match=r"optim\.learnin_rate.*unknown key.*optim\.learning_rate"
    ):
        validate_config(config)


def test_unknown_section_is_refused():
    config = base_config()
    with config.unlocked():
        config.extra = {"x": 1}
    with pytest.raises(ConfigError, match=r"extra\.x.*unknown key"):
        validate_config(config)


@pytest.mark.parametrize("key", ["host_allocator", "cpu_vector_width", "cpu_devices"])
def test_process_settings_are_not_config_keys(key):
    """CPU allocator, vector width and device count are flags of the entry points."""
    assert key not in base_config().train
    config = base_config()
    with config.unlocked():
        config.train[key] = "1"
    with pytest.raises(ConfigError, match=rf"train\.{key}.*unknown key"):
        validate_config(config)


def test_heads_must_divide_embed_dim_for_transformer():
    config = base_config()
    config.model.name = "transformer"
    config.model.embed_dim = 30
    config.model.num_heads = 4
    with pytest.raises(ConfigError, match=r"num_heads=4.*divisor of model\.embed_dim=30"):
        validate_config(config)


def test_adamw_with_l2_mode_is_contradictory():
    config = base_config()
    config.optim.optimizer = "adamw"
    config.optim.weight_decay_mode = "l2"
    with pytest.raises(ConfigError, match="weight_decay_mode"):
        validate_config(config)


@pytest.mark.parametrize(
    ("optimizer", "mode", "effective"),
    [
        ("adam", "auto", "l2"),
        ("sgd", "auto", "l2"),
        ("adamw", "auto", "decoupled"),
        ("adam", "decoupled", "decoupled"),
        ("sgd", "l2", "l2"),
    ],
)
def test_weight_decay_mode_resolution(optimizer, mode, effective):
    assert (
        config_lib.weight_decay_mode({"optimizer": optimizer, "weight_decay_mode": mode})
        == effective
    )


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        validate_config(_with("train.batch_size", True))


def test_norm_is_checked_by_the_transformer():
    config = _with("model.norm", "group")
    config.model.name = "transformer"
    with pytest.raises(ConfigError, match=r"config\.model\.norm='group'.*layer, batch, rms"):
        validate_config(config)


def test_override_keys_are_checked_against_the_config_file():
    config = base_config()
    config_lib.check_override_keys(config, ["--config.optim.learning_rate=0.1", "--workdir=x"])
    with pytest.raises(ConfigError, match=r"config\.optim\.lr='0\.1'.*optim\.learning_rate"):
        config_lib.check_override_keys(config, ["--config.optim.lr=0.1"])
    with pytest.raises(
        ConfigError, match=r"config\.optm\.lr='3'.*allowed keys here: data, mesh, model"
    ):
        config_lib.check_override_keys(config, ["--config.optm.lr", "3"])


def test_validate_config_returns_a_frozen_typed_run_config():
    cfg = validate_config(base_config())
    assert isinstance(cfg, config_lib.RunConfig)
    assert isinstance(cfg.data, config_lib.DataConfig)
    assert isinstance(cfg.optim, config_lib.OptimConfig)
    assert cfg.optim.learning_rate == cfg["optim"]["learning_rate"] == 1e-3
    assert isinstance(cfg.optim.learning_rate, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.learning_rate = 0.1
    with pytest.raises(TypeError):
        cfg["train"]["batch_size"] = 3
    assert validate_config(cfg) is cfg  # validating again costs nothing
    assert config_lib.config_to_dict(cfg) == config_lib.config_to_dict(base_config())
    assert validate_config(config_lib.config_to_dict(cfg)) == cfg


def test_an_int_learning_rate_is_stored_as_a_float():
    cfg = validate_config(_with("optim.learning_rate", 1))
    assert cfg.optim.learning_rate == 1.0 and isinstance(cfg.optim.learning_rate, float)


def test_allowed_values_come_from_the_code_that_implements_them():
    from jaxnn.models.bow import POOLINGS as BOW_POOLINGS
    from jaxnn.nn.normalization import NORMS
    from jaxnn.nn.pooling import POOLS
    from jaxnn.ops.activations import ACTIVATIONS
    from jaxnn.ops.attention import IMPLEMENTATIONS

    assert config_lib.ATTENTION_IMPLS is IMPLEMENTATIONS
    assert config_lib.ACTIVATIONS == tuple(ACTIVATIONS)
    assert config_lib.NORMS == tuple(NORMS)
    assert config_lib.POOLINGS == tuple(POOLS)
    transformer = base_config()
    transformer.model.name = "transformer"
    for impl in IMPLEMENTATIONS:
        transformer.model.attention_impl = impl
        validate_config(transformer)
    bow = base_config()
    for pooling in BOW_POOLINGS:
        bow.model.pooling = pooling
        validate_config(bow)


def test_corpus_options_pass_only_what_differs_from_the_reader_defaults(synthetic_corpus):
    config = base_config()
    config.data.corpus = str(synthetic_corpus)
    assert config_lib.corpus_options(validate_config(config).data) == {}
    config.data.text_column = "sentence"
    config.data.label_column = "category"
    config.data.split_column = "part"
    config.data.delimiter = ";"
    assert config_lib.corpus_options(validate_config(config).data) == {
        "text_column": "sentence",
        "label_column": "category",
        "split_column": "part",
        "delimiter": ";",
    }


def test_a_failed_start_writes_nothing_to_the_workdir(tiny_config, tmp_path):
    """The data is read and checked before the workdir is written: fixing the config and
    starting again is not refused as "a different config"."""
    from jaxnn.train import loop

    tiny_config.data.text_column = "sentence"  # the synthetic CSV's column is "text"
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match="sentence"):
        loop.train_and_evaluate(tiny_config, workdir)
    assert not (workdir / "config.json").exists()
    tiny_config.data.text_column = "text"
    tiny_config.train.num_epochs = 1
    tiny_config.train.max_steps_per_epoch = 2
    loop.train_and_evaluate(tiny_config, workdir)  # not refused as "a different config"
    assert (workdir / "config.json").is_file()


def test_the_transformer_config_computes_in_bfloat16_on_accelerators_only():
    assert validate_config(load_config_file("imdb_transformer")).model.dtype == "auto"


def test_the_default_config_is_imdb():
    cfg = validate_config(load_config_file("default"))
    assert cfg.data.corpus == "imdb"
    assert cfg.model.name == "bow"


def test_train_py_defaults_to_configs_default_and_a_workdir_under_runs(tmp_path):
    """train.py without flags: configs/default.py (IMDB) into runs/default-<time> (the training
    itself replaced by a stub that reports what it was given)."""
    out = tmp_path / "called.json"
    code = textwrap.dedent(f"""
        import json, runpy, sys
        import jaxnn.train

        def fake(config, workdir, overwrite=False, **kwargs):
            with open({str(out)!r}, "w") as f:
                json.dump({{"corpus": config.data.corpus, "model": config.model.name,
                           "workdir": str(workdir), "overwrite": overwrite}}, f)
            sys.exit(0)

        jaxnn.train.train_and_evaluate = fake
        sys.argv = ["train.py"]
        runpy.run_path("train.py", run_name="__main__")
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    called = json.loads(out.read_text())
    assert called["corpus"] == "imdb" and called["model"] == "bow"
    assert called["overwrite"] is False
    workdir = Path(called["workdir"])
    assert workdir.parent == ROOT / "runs"
    assert workdir.name.startswith("default-")
