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
    assert m["dtype"] in ("bfloat16", "auto") and m["attention_dropout"] == 0.0


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
