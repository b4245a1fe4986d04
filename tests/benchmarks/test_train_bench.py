"""benchmarks/train.py: the FLOP count, the denominator's size, PyTorch's twin, the report."""

import importlib.util

import pytest

from tests.benchmarks.conftest import load_script

bench = load_script("train")


def test_transformer_flops_counts_every_matmul():
    config = {
        "model": {"embed_dim": 8, "mlp_dim": 16, "num_layers": 3},
        "train": {"batch_size": 2},
        "data": {"max_len": 5},
    }
    b, t, d, f, layers, c = 2, 5, 8, 16, 3, bench.CLASSES
    # forward matmuls of one layer, as (m, k, n): Q, K, V, out; QK^T and PV; the MLP's two
    matmuls = [(b * t, d, d)] * 4 + [(b * t, d, t), (b * t, t, d)] + [(b * t, d, f), (b * t, f, d)]
    forward = layers * sum(2 * m * k * n for m, k, n in matmuls) + 2 * b * d * c
    assert bench.transformer_flops(config) == pytest.approx(3 * forward)


def test_matmul_size_saturates_accelerators():
    assert bench.matmul_size("gpu") == bench.matmul_size("tpu") == 8192
    assert bench.matmul_size("cpu", quick=True) < bench.matmul_size("cpu") <= 4096


def test_compute_dtype_and_torch_device():
    assert bench.compute_dtype({"model": {"dtype": "bfloat16"}}) == "bfloat16"
    assert bench.compute_dtype({"model": {"dtype": "auto"}}) == "float32"  # on this CPU
    device, why = bench.torch_device("tpu")
    assert device is None and why
    if importlib.util.find_spec("torch") is not None:
        assert bench.torch_device("cpu") == ("cpu", "")


def test_process_defaults_are_train_py_cpu_recipe():
    """The transformers run with train.py's CPU recipe (as benchmarks/compile.py compiles
    them), bow with train.py's defaults; every key is one configure_process knows."""
    from jaxnn.launch.process import DEFAULTS

    compile_bench = load_script("compile")
    configs = bench.model_configs(quick=True)
    assert set(bench.PROCESS_DEFAULTS) == set(bench.MODELS)
    for name, config in configs.items():
        assert bench.PROCESS_DEFAULTS[name] == compile_bench.process_defaults(config)
        assert set(bench.PROCESS_DEFAULTS[name]) <= set(DEFAULTS)
    assert bench.PROCESS_DEFAULTS["transformer"] == {
        "cpu_devices": "cores",
        "host_allocator": "keep",
    }
    assert bench.PROCESS_DEFAULTS["bow"] == {}


def test_process_settings_apply_on_cpu_only(monkeypatch):
    """A model's process: its CPU settings on a CPU, none on a GPU (backend from the probe)."""
    calls = []
    monkeypatch.setattr(bench, "configure_process", lambda **kw: calls.append(kw) or kw)
    config = bench.model_configs(quick=True)["transformer"]
    args = type("Args", (), {"cpu_vector_width": None, "backend": "gpu"})()
    bench.process_settings("transformer", config, args)
    [call] = calls
    assert call["backend"].platform == "gpu" and not call["backend"].is_cpu
    assert call["defaults"] == bench.PROCESS_DEFAULTS["transformer"]
    assert call["batch_sizes"] == (16, config["train"]["eval_batch_size"])
    # and configure_process itself applies nothing off the CPU
    from jaxnn.launch import Backend, configure_process

    settings = configure_process(
        defaults=bench.PROCESS_DEFAULTS["transformer"], backend=Backend("gpu", "test")
    )
    assert settings.applied == () and settings.ignored == ()


def test_default_models_add_the_gpu_workload_on_accelerators():
    assert "transformer_gpu" not in bench.default_models("cpu")
    assert "transformer_gpu" in bench.default_models("gpu")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
@pytest.mark.parametrize("name", ["transformer", "transformer_gpu"])
def test_torch_twin_has_jaxnn_parameter_count(name):
    """Same architecture: the PyTorch twin has exactly as many parameters as jaxnn's model."""
    import jax

    from jaxnn.models import get_model

    config = bench.model_configs(quick=True)[name]
    length = config["data"]["max_len"]
    cls, sparse = bench._torch_models(name, config, length)
    torch_count = sum(p.numel() for p in cls().parameters())
    model = get_model(config, vocab_size=bench.VOCAB, num_classes=bench.CLASSES)
    import jax.numpy as jnp

    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, length), jnp.int32),
            jnp.ones((1, length), bool),
            train=False,
        )
    )
    jax_count = sum(x.size for x in jax.tree.leaves(shapes["params"]))
    assert torch_count == jax_count
    assert sparse == (("embed.weight",) if config["optim"]["sparse_embeddings"] else ())


def test_markdown_flags_a_share_above_one():
    model = {
        "batch_size": 4,
        "length": 8,
        "dtype": "bfloat16",
        "host_allocator": {"mode": "system"},
        "cpu_vector_width": {"setting": "auto", "width": 0},
        "cpu_devices": {"setting": "1", "devices": 1},
        "jax": {
            "tokens_per_s": 1000.0,
            "examples_per_s": 125.0,
            "compile_s": 1.0,
            "flops_per_step": 1e9,
        },
        "torch": {"skipped": "torch is not importable"},
        "torch_compile": None,
        "matmul": {"n": 8192, "dtype": "bfloat16", "calls": 10, "flops_per_s": 1e12},
        "mfu_vs_matmul": 1.3,
        "jax_over_torch_tokens": None,
        "jax_over_torch_compile_tokens": None,
    }
    results = {
        "backend": "gpu",
        "devices": "1 device",
        "machine": "x",
        "load_average": [0.0],
        "host_allocator_env": "",
        "repeats": 3,
        "models": {"transformer": model},
    }
    md = bench.markdown(results)
    assert "130.0% (**> 100 %: denominator too small**)" in md
    assert "- transformer, PyTorch: torch is not importable" in md
    assert "10 x 8192^3 matmul(s)" in md


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_twin_computes_jaxnn_logits():
    """With jaxnn's weights copied in, the PyTorch twin gives jaxnn's logits (eval mode, a
    batch with padding, float32 at the highest matmul precision): the same architecture."""
    import jax
    import numpy as np
    import torch

    from jaxnn.models import get_model
    from jaxnn.train.config import config_to_dict, validate_config

    config = config_to_dict(bench.model_configs(quick=True)["transformer"])
    config["model"].update(embed_dim=16, num_heads=2, mlp_dim=32, num_layers=2)
    config["data"]["max_len"] = length = 8
    config = validate_config(config)
    model = get_model(config, vocab_size=bench.VOCAB, num_classes=bench.CLASSES)
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, bench.VOCAB, size=(3, length)).astype(np.int32)
    mask = np.ones((3, length), bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    params = model.init(jax.random.key(0), tokens, mask, train=False)["params"]
    with jax.default_matmul_precision("highest"):
        expected = np.asarray(model.apply({"params": params}, tokens, mask, train=False))

    cls, _ = bench._torch_models("transformer", config, length)
    twin = cls().eval()
    t = lambda x: torch.from_numpy(np.asarray(x, np.float32).copy())
    d = 16
    state = {
        "embed.weight": t(params["embed"]["embedding"]),
        "position.weight": t(params["position_embed"]["embedding"]),
        "norm.weight": t(params["final_norm"]["scale"]),
        "norm.bias": t(params["final_norm"]["bias"]),
        "head.weight": t(params["head"]["kernel"]).T,
        "head.bias": t(params["head"]["bias"]),
    }
    for i in range(2):
        p, prefix = params[f"blocks_{i}"], f"blocks.{i}."
        attn = p["attention"]
        qkv = [t(attn[n]["kernel"]).reshape(d, d).T for n in ("query", "key", "value")]
        state.update(
            {
                prefix + "norm_1.weight": t(p["norm_1"]["scale"]),
                prefix + "norm_1.bias": t(p["norm_1"]["bias"]),
                prefix + "norm_2.weight": t(p["norm_2"]["scale"]),
                prefix + "norm_2.bias": t(p["norm_2"]["bias"]),
                prefix + "qkv.weight": torch.cat(qkv),
                prefix + "qkv.bias": torch.cat(
                    [t(attn[n]["bias"]).reshape(d) for n in ("query", "key", "value")]
                ),
                prefix + "out.weight": t(attn["out"]["kernel"]).reshape(d, d).T,
                prefix + "out.bias": t(attn["out"]["bias"]),
                prefix + "fc_1.weight": t(p["mlp"]["Dense_0"]["kernel"]).T,
                prefix + "fc_1.bias": t(p["mlp"]["Dense_0"]["bias"]),
                prefix + "fc_2.weight": t(p["mlp"]["Dense_1"]["kernel"]).T,
                prefix + "fc_2.bias": t(p["mlp"]["Dense_1"]["bias"]),
            }
        )
    twin.load_state_dict(state)  # strict: every parameter mapped, none left over
    with torch.no_grad():
        got = twin(torch.from_numpy(tokens).long(), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
