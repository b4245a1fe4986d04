"""benchmarks/compile.py: the config list, the HLO summary, one real compile, the report."""

import jax
import jax.numpy as jnp
import pytest

from tests.benchmarks.conftest import load_script

bench = load_script("compile")


def test_shipped_configs_skip_tuner_and_sweep_configs():
    found = {name: (config, why) for name, config, why in bench.shipped_configs()}
    assert found["tune_imdb.py"][0] is None and "config.tune" in found["tune_imdb.py"][1]
    assert found["bias_variance_bbc.py"][0] is None
    for name in ("default.py", "imdb_transformer.py", "imdb_transformer_gpu.py", "tiny.py"):
        config, why = found[name]
        assert why == "" and config["model"]["name"] in ("bow", "transformer")


def test_gpu_workload_config_shapes():
    [(_, config, _)] = bench.shipped_configs(["imdb_transformer_gpu.py"])
    m = config["model"]
    assert (m["embed_dim"], m["num_layers"], m["num_heads"], m["mlp_dim"]) == (512, 6, 8, 2048)
    assert (config["data"]["max_len"], config["train"]["batch_size"]) == (512, 128)
    assert m["dtype"] == "auto" and m["attention_dropout"] == 0.0  # float32 on a CPU


def test_process_defaults_give_the_transformers_train_py_cpu_recipe():
    found = {name: config for name, config, _ in bench.shipped_configs() if config is not None}
    for name, config in found.items():
        expected = bench.TRANSFORMER_CPU_RECIPE if config["model"]["name"] == "transformer" else {}
        assert bench.process_defaults(config) == expected, name
    assert bench.process_defaults(found["imdb_transformer.py"]) == {
        "cpu_devices": "cores",
        "host_allocator": "keep",
    }
    assert bench.dtype_label("bfloat16") == "bfloat16"
    assert bench.dtype_label("auto") == "auto: float32"  # on this CPU


def test_per_process_run_merges_children_and_labels_their_settings(monkeypatch, tmp_path):
    """With several configs each is compiled by its own child (fake here); skipped configs
    start none; the table names each config's allocator and CPU devices."""
    started = []

    def fake_child(name, args, tmp, log=print):
        started.append(name)
        timing = {"lower_s": 1.0, "compile_s": 2.0, "total_s": 3.0, "cpu_s": 2.5, "hlo": {}}
        shapes = {"train_batch": [8, 16], "eval_batch": [8, 16], "model": "m", "dtype": "f"}
        keep = name == "imdb_transformer.py"
        entry = {
            "shapes": shapes,
            "train": timing,
            "eval": timing,
            "over_budget": [],
            "host_allocator": "keep" if keep else "system",
            "cpu_devices": 2 if keep else 1,
        }
        header = {"backend": "cpu", "devices": ["cpu"], "jax_version": "x", "budget_s": 20.0}
        return header, {name: entry}

    monkeypatch.setattr(bench, "compile_in_subprocess", fake_child)
    args = type(
        "Args",
        (),
        {"configs": ["tiny.py", "tune_bbc.py", "imdb_transformer.py"], "quick": False},
    )()
    results = bench.run_per_process(args, log=lambda *_: None)
    assert started == ["tiny.py", "imdb_transformer.py"]  # in order; tune_bbc.py not started
    assert results["configs"]["tune_bbc.py"]["skipped"]
    results["process_settings"] = "train"
    md = bench.markdown(results)
    assert "| imdb_transformer.py (allocator keep, 2 CPU devices) | m (f) |" in md
    assert "| tiny.py (allocator system, 1 CPU device) |" in md
    assert "as train.py runs it" in md


def test_hlo_summary_counts_while_loops():
    def f(x):
        return jax.lax.fori_loop(0, x.shape[0], lambda i, c: c + x[i], jnp.zeros(()))

    x = jnp.arange(7.0)
    compiled = jax.jit(f).lower(x).compile()
    summary = bench.hlo_summary(compiled)
    assert summary["while_loops"] == 1
    assert summary["instructions"] > 3
    assert sum(summary["top_ops"].values()) <= summary["instructions"]


def test_with_overrides_sets_dotted_keys_and_validates():
    [(_, config, _)] = bench.shipped_configs(["tiny.py"])
    changed = bench.with_overrides(config, {"model.dropout": 0.0, "train.batch_size": 8})
    assert (changed["model"]["dropout"], changed["train"]["batch_size"]) == (0.0, 8)
    assert config["model"]["dropout"] == 0.1  # the original is untouched
    with pytest.raises(ValueError, match="dropout"):
        bench.with_overrides(config, {"model.dropout": 1.5})


def test_time_compile_splits_lower_and_compile():
    timing = bench.time_compile(jax.jit(lambda x: jnp.sin(x) @ x.T), jnp.ones((4, 3)))
    assert timing["lower_s"] > 0 and timing["compile_s"] > 0 and timing["cpu_s"] >= 0
    assert timing["total_s"] == pytest.approx(timing["lower_s"] + timing["compile_s"])
    assert timing["hlo"]["instructions"] >= 2 and timing["hlo"]["while_loops"] == 0


@pytest.mark.slow
def test_compile_config_times_both_steps():
    [(_, config, _)] = bench.shipped_configs(["tiny.py"])
    small = bench.with_overrides(
        config,
        {
            "data.max_len": 16,
            "train.batch_size": 8,
            "train.eval_batch_size": 8,
            "model.bigram_buckets": 64,
        },
    )
    result = bench.compile_config(small, vocab_size=100, num_classes=5)
    assert result["shapes"]["train_batch"] == [8, 16]
    assert result["shapes"]["num_classes"] == 5
    for step in ("train", "eval"):
        timing = result[step]
        assert timing["lower_s"] > 0 and timing["compile_s"] > 0
        assert timing["total_s"] == pytest.approx(timing["lower_s"] + timing["compile_s"])
        assert timing["hlo"]["instructions"] > 0


def test_markdown_flags_over_budget_and_lists_skips(tmp_path):
    timing = lambda s: {
        "lower_s": 1.0,
        "compile_s": s,
        "total_s": 1.0 + s,
        "hlo": {"instructions": 10, "while_loops": 0, "top_ops": {}},
    }
    shapes = {
        "train_batch": [64, 256],
        "eval_batch": [256, 256],
        "model": "transformer",
        "dtype": "float32",
    }
    results = {
        "backend": "gpu",
        "devices": ["NVIDIA H200"],
        "jax_version": "0.11.2",
        "budget_s": 15.0,
        "configs": {
            "a.py": {
                "shapes": shapes,
                "train": timing(30.0),
                "eval": timing(2.0),
                "over_budget": ["train"],
            },
            "b.py": {"skipped": "not a training run (has config.tune)"},
            "c.py": {"error": "timed out after 90 s:\nstill compiling"},
        },
    }
    json_path, md_path = bench.write_report(results, tmp_path, "t")
    md = md_path.read_text()
    assert json_path.name == "compile.t.json"
    assert "| a.py | transformer (float32) | 64 x 256 | 1.00 | 30.00 | n/a |" in md
    assert "**no: train**" in md
    assert "| b.py | not a training run (has config.tune) |" in md
    assert "error: timed out after 90 s: still compiling" in md
