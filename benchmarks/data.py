"""Benchmark jaxnn.data on the full IMDB corpus.

Measures, each as the median of --repeats runs in this one process:
  - tokenize + build vocabulary + encode all 49,582 IMDB reviews (train, validation and test):
    jaxnn's regex tokenizer with interned ids, a plain per-token Python baseline, and, when it is
    installed, Hugging Face `tokenizers` (WordLevel model, same token rule);
  - `prepare("imdb")` cold (empty cache) and cached;
  - the batch iterator's rate (batches/s, with and without `prefetch`) against the rate at which
    a jitted bag-of-words training step consumes the same batches (the cheapest model jaxnn
    trains, so the hardest case for the iterator);
  - peak resident memory of a fresh process that runs `prepare("imdb")` from an empty cache.

Writes benchmarks/results/data.json, data.md and data.png. Run:
    .venv/bin/python benchmarks/data.py [--repeats 3] [--max-len 256] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from output import COMMITTED, add_output_flags, output_dir  # noqa: E402  (benchmarks/output.py)

from jaxnn import data  # noqa: E402
from jaxnn.data.corpora import data_dir  # noqa: E402
from jaxnn.data.vocab import encode_token_batch  # noqa: E402
from jaxnn.launch import configure_process  # noqa: E402

RESULTS = COMMITTED  # main() points it at runs/benchmarks/ unless --commit-results


def median_time(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), times, out


def jaxnn_pipeline(train, others, max_len):
    batch = data.tokenize_batch([*train, *others])
    vocab = data.Vocabulary.from_token_batch(batch, min_freq=1, rows=slice(0, len(train)))
    encoded, _ = encode_token_batch(vocab, batch, max_len)
    return len(vocab), encoded.tokens.shape


def python_baseline(train, others, max_len):
    """Per-token Python: tokenize each text, Counter, dict lookups, fill a padded array."""
    token_lists = [data.tokenize(t) for t in [*train, *others]]
    counts = collections.Counter(itertools.chain.from_iterable(token_lists[: len(train)]))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    index = {w: i + 2 for i, w in enumerate(words)}
    out = np.zeros((len(token_lists), max_len), dtype=np.int32)
    for row, tokens in enumerate(token_lists):
        ids = [index.get(w, 1) for w in tokens[:max_len]]
        out[row, : len(ids)] = ids
    return len(index) + 2, out.shape


def hf_pipeline(train, others, max_len):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(r"\w+(?:['’]\w+)*|[^\w\s]"), behavior="isolated"),
        ]
    )
    trainer = trainers.WordLevelTrainer(
        special_tokens=["<pad>", "<unk>"], min_frequency=1, vocab_size=10**8, show_progress=False
    )
    tokenizer.train_from_iterator(train, trainer=trainer)
    tokenizer.enable_truncation(max_len)
    tokenizer.enable_padding(pad_id=0, pad_token="<pad>", length=max_len)
    encodings = tokenizer.encode_batch([*train, *others])
    out = np.array([e.ids for e in encodings], dtype=np.int32)
    return tokenizer.get_vocab_size(), out.shape


def bow_step_rate(batches, vocab_size: int, num_classes: int, dim: int = 64) -> float:
    """Steps/s of a jitted bag-of-words SGD step (embedding mean-pool + linear + softmax CE)."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    params = {
        "embed": jax.random.normal(key, (vocab_size, dim)) * 0.02,
        "w": jnp.zeros((dim, num_classes)),
        "b": jnp.zeros((num_classes,)),
    }

    def loss_fn(p, batch):
        emb = p["embed"][batch["tokens"]] * batch["mask"][..., None]
        pooled = emb.sum(1) / jnp.maximum(batch["mask"].sum(1, keepdims=True), 1)
        logits = pooled @ p["w"] + p["b"]
        nll = -jax.nn.log_softmax(logits)[jnp.arange(logits.shape[0]), batch["labels"]]
        return (nll * batch["weights"]).sum() / jnp.maximum(batch["weights"].sum(), 1)

    @jax.jit
    def step(p, batch):
        grads = jax.grad(loss_fn)(p, batch)
        return jax.tree.map(lambda a, g: a - 0.1 * g, p, grads)

    for b in batches:  # compile every bucket first
        params = step(params, b)
    jax.block_until_ready(params)
    start = time.perf_counter()
    for b in batches:
        params = step(params, b)
    jax.block_until_ready(params)
    return len(batches) / (time.perf_counter() - start)


def peak_memory_mb(max_len: int) -> float:
    """Peak resident memory (VmHWM) of a fresh process running prepare('imdb') from an empty
    encoded cache, then load_test_split. (Not ru_maxrss: Linux carries that across exec from the
    forking parent, this benchmark process.)"""
    code = (
        "import sys, tempfile, os\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from jaxnn import data\n"
        "root = tempfile.mkdtemp()\n"
        f"os.symlink({str(data_dir() / 'wheels')!r}, os.path.join(root, 'wheels'))\n"
        f"data.prepare('imdb', max_len={max_len}, data_dir=root, unk_warn_threshold=None)\n"
        "data.load_test_split('imdb', data_dir=root)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(int(hwm.split()[1]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-hf", action="store_true", help="skip Hugging Face tokenizers")
    parser.add_argument("--hf-repeats", type=int, default=1, help="runs of the (slow) HF path")
    add_output_flags(parser)
    args = parser.parse_args()
    global RESULTS
    RESULTS = output_dir(args)
    results: dict = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
        "args": vars(args),
    }

    t_load, _, corpus = median_time(lambda: data.load_corpus("imdb"), 1)
    test = data.load_test_split("imdb")
    train, others = corpus.train.texts, [*corpus.validation.texts, *test.texts]
    n_all = len(train) + len(others)
    print(f"load_corpus('imdb'): {t_load:.2f} s ({n_all} reviews after dedup)")

    rows = {}
    pipelines = [
        ("jaxnn (regex + interned ids)", jaxnn_pipeline),
        ("per-token Python", python_baseline),
    ]
    try:
        import tokenizers

        if not args.skip_hf:
            pipelines.append((f"HF tokenizers {tokenizers.__version__} WordLevel", hf_pipeline))
    except ImportError:
        print("Hugging Face tokenizers not installed: skipped")
    for name, fn in pipelines:
        repeats = args.hf_repeats if fn is hf_pipeline else args.repeats
        med, times, (vsize, shape) = median_time(
            lambda fn=fn: fn(train, others, args.max_len), repeats
        )
        rows[name] = {"median_s": med, "times_s": times, "vocab_size": vsize, "shape": shape}
        print(f"tokenize+vocab+encode all IMDB, {name}: median {med:.2f} s {times} V={vsize}")
    base = rows["jaxnn (regex + interned ids)"]["median_s"]
    for row in rows.values():
        row["ratio_to_jaxnn"] = row["median_s"] / base
    results["tokenize_encode_all_imdb"] = rows

    with tempfile.TemporaryDirectory() as root:
        os.symlink(data_dir() / "wheels", Path(root) / "wheels")
        cold = []
        for i in range(args.repeats):
            start = time.perf_counter()
            prep = data.prepare(
                "imdb", max_len=args.max_len, data_dir=root, seed=i, unk_warn_threshold=None
            )
            cold.append(time.perf_counter() - start)
        t_cached, cached, prep = median_time(
            lambda: data.prepare(
                "imdb", max_len=args.max_len, data_dir=root, seed=0, unk_warn_threshold=None
            ),
            max(5, args.repeats),
        )
        assert prep.info["cache"]["hit"]
    results["prepare_imdb"] = {
        "cold_median_s": float(np.median(cold)),
        "cold_times_s": cold,
        "cached_median_s": t_cached,
        "cached_times_s": cached,
        "cold_over_cached": float(np.median(cold)) / t_cached,
        "train_examples": len(prep.train),
        "validation_examples": len(prep.validation),
        "vocab_size": len(prep.vocab),
        "unk": prep.info["unk"],
        "num_truncated": prep.info["num_truncated"],
    }
    print(f"prepare('imdb') cold: median {np.median(cold):.2f} s; cached: median {t_cached:.3f} s")

    # Iterator rate vs a jitted bag-of-words step.
    iterator_rows = {}
    consumer = None
    for sort_pool in (0, 16):
        it = data.BatchIterator(
            prep.train, batch_size=args.batch_size, shuffle=True, seed=0, sort_pool=sort_pool
        )
        t_plain, _, _ = median_time(lambda it=it: sum(1 for _ in it.epoch(1)), args.repeats)
        t_pref, _, _ = median_time(
            lambda it=it: sum(1 for _ in data.prefetch(it.epoch(1))), args.repeats
        )
        batches = list(it.epoch(0))
        step_rate = bow_step_rate(batches, len(prep.vocab), prep.num_classes)
        if sort_pool == 0:
            consumer = step_rate
        mean_len = float(np.mean([b["tokens"].shape[1] for b in batches]))
        iterator_rows[f"sort_pool={sort_pool}"] = {
            "batches_per_epoch": len(it),
            "iterator_batches_per_s": len(it) / t_plain,
            "prefetch_batches_per_s": len(it) / t_pref,
            "bow_step_batches_per_s": step_rate,
            "iterator_over_step": (len(it) / t_plain) / step_rate,
            "mean_bucket_length": mean_len,
        }
        print(
            f"iterator sort_pool={sort_pool}: {len(it) / t_plain:.0f} batches/s "
            f"(prefetch {len(it) / t_pref:.0f}/s); BoW jitted step {step_rate:.0f} steps/s; "
            f"ratio {(len(it) / t_plain) / step_rate:.1f}x; mean L {mean_len:.0f}"
        )
    results["iterator"] = iterator_rows
    results["iterator"]["note"] = (
        "step = jitted bag-of-words SGD step on CPU (embedding gather, masked mean, linear, "
        "softmax CE, grad); ratio = iterator batches/s over step batches/s"
    )
    del consumer

    mem = peak_memory_mb(args.max_len)
    results["peak_memory_mb_prepare_imdb"] = mem
    print(f"peak memory (fresh process, prepare('imdb') cold + load_test_split): {mem:.0f} MB")

    results["machine"]["load_average_at_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data.json").write_text(json.dumps(results, indent=2, default=list))
    write_markdown(results)
    write_plot(results)
    print(f"wrote {RESULTS / 'data.json'}, data.md, data.png")


def write_markdown(r: dict) -> None:
    lines = [
        "# jaxnn.data on IMDB",
        "",
        f"Machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, load average at "
        f"start {', '.join(f'{x:.2f}' for x in r['machine']['load_average_at_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in r['machine']['load_average_at_end'])} (other jobs "
        "share the cores: absolute times are noisy, ratios within one run are not). "
        f"Medians of {r['args']['repeats']} runs; max_len {r['args']['max_len']}.",
        "",
        "| tokenize + vocabulary + encode, all 49,582 reviews | median s | × jaxnn | V |",
        "|---|---:|---:|---:|",
    ]
    for name, row in r["tokenize_encode_all_imdb"].items():
        lines.append(
            f"| {name} | {row['median_s']:.2f} | {row['ratio_to_jaxnn']:.2f} | "
            f"{row['vocab_size']} |"
        )
    p = r["prepare_imdb"]
    lines += [
        "",
        "| prepare('imdb') | median s |",
        "|---|---:|",
        f"| cold (load, dedup, split, tokenize, encode, write cache) | {p['cold_median_s']:.2f} |",
        f"| cached | {p['cached_median_s']:.3f} |",
        "",
        f"| iterator (batch {r['args']['batch_size']}) | iterator batches/s | with prefetch "
        "| BoW step/s | ratio | mean L |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in r["iterator"].items():
        if name == "note":
            continue
        lines.append(
            f"| {name} | {row['iterator_batches_per_s']:.0f} | {row['prefetch_batches_per_s']:.0f}"
            f" | {row['bow_step_batches_per_s']:.0f} | {row['iterator_over_step']:.1f}× | "
            f"{row['mean_bucket_length']:.0f} |"
        )
    lines += [
        "",
        r["iterator"]["note"],
        "",
        f"Peak memory, fresh process running prepare('imdb') cold: "
        f"{r['peak_memory_mb_prepare_imdb']:.0f} MB.",
        "",
    ]
    (RESULTS / "data.md").write_text("\n".join(lines))


def write_plot(r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(r["tokenize_encode_all_imdb"])
    a.barh(names, [r["tokenize_encode_all_imdb"][n]["median_s"] for n in names])
    a.axvline(10, color="k", ls="--", lw=1, label="10 s target")
    a.set_xlabel("seconds (median)")
    a.set_title("tokenize + vocab + encode, all IMDB")
    a.legend()
    p = r["prepare_imdb"]
    b.bar(["cold", "cached"], [p["cold_median_s"], p["cached_median_s"]])
    b.axhline(1, color="k", ls="--", lw=1, label="1 s target (cached)")
    b.set_ylabel("seconds (median)")
    b.set_title("prepare('imdb')")
    b.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "data.png", dpi=120)


if __name__ == "__main__":
    configure_process()  # before JAX's first computation; CPU runs only (jaxnn.launch)
    main()
