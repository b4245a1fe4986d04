"""Train-step benchmark: jaxnn's jitted step for the bow and transformer models, beside PyTorch.

    .venv/bin/python benchmarks/train.py [--quick] [--no-torch] [--epoch-corpus bbc_news]

For each model, on synthetic full-length batches (every token real):
  - examples/s and tokens/s of the train step (median over timed blocks, after warmup),
  - compile time (lower + compile of the step),
  - model FLOPs per step (bow: XLA's cost analysis of the compiled step; transformer: counted
    from the shapes) and the achieved FLOP/s as a fraction of a dense float32 matmul's rate
    ("MFU vs matmul": the matmul's fastest round in the same run, so load cannot flatter it),
  - the same model and step in PyTorch (when importable): EmbeddingBag/Embedding(sparse=True) +
    SparseAdam for the tables, Adam/AdamW for the rest, same shapes, same threads.
jaxnn's block of steps, PyTorch's and the matmul alternate round by round (time_interleaved), so
the ratios compare runs that saw the same load.
Then one full epoch of real training (`Trainer.run_epoch`) counts the step's compilations, which
must not exceed the number of length buckets.

Each model runs in its own Python process, set up as `python train.py` runs it on a CPU
(`jaxnn.launch.configure_process`, before JAX starts): the bag-of-words model with the defaults,
the transformer as the CPU recipe of train.py's docstring, `PROCESS_DEFAULTS`: freed host blocks
kept (``--host_allocator=keep``) and one XLA:CPU device per core (``--cpu_devices=cores``), its
step data parallel over the cores and waiting for each step as train.py does. The settings are
process-wide, so the PyTorch twin and the matmul of that process run under them too;
$JAXNN_HOST_ALLOCATOR and $JAXNN_CPU_DEVICES, when set, override them. ``--cpu-vector-width``
(else $JAXNN_CPU_VECTOR_WIDTH, else "auto") sets XLA:CPU's vector width of both, and the table
names what each process came to. The matmul runs on one of the devices, which still uses every
core (XLA splits a dense matmul over its worker pool). On a GPU or TPU none of this applies.

Writes benchmarks/results/train.json, train.md and train.png. Timings on a shared 2-core CPU are
noisy: only medians and ratios measured in the same run are reported; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # timing.py, also when imported from elsewhere

from timing import time_interleaved  # noqa: E402  (benchmarks/timing.py)

from jaxnn.launch import configure_process  # noqa: E402
from jaxnn.launch.cpu_devices import cpu_devices  # noqa: E402
from jaxnn.launch.cpu_vector_width import SETTINGS as CPU_VECTOR_WIDTHS  # noqa: E402
from jaxnn.launch.cpu_vector_width import cpu_vector_width  # noqa: E402
from jaxnn.launch.host_memory import host_allocator  # noqa: E402
from jaxnn.train.config import base_config, validate_config  # noqa: E402
from jaxnn.train.distributed import describe_mesh, make_mesh, shard_batch  # noqa: E402
from jaxnn.train.trainer import build_steps, init_train_state  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
VOCAB = 30000
CLASSES = 2


# each model's CPU process settings (jaxnn.launch), below the environment's: the transformer as
# train.py's docstring runs it on a CPU (data parallel over the cores, freed blocks kept)
PROCESS_DEFAULTS = {"bow": {}, "transformer": {"cpu_devices": "cores", "host_allocator": "keep"}}


def model_configs(quick: bool) -> dict[str, dict]:
    """The benchmarked settings: default.py's bow model and the issue's reference transformer
    (the model of imdb_transformer.py)."""
    bow = base_config()
    bow.model.name = "bow"
    bow.model.embed_dim = 32
    bow.model.bigram_buckets = 2**20
    bow.optim.optimizer = "adam"
    bow.train.batch_size = 32
    bow.data.max_len = 256
    tr = base_config()
    tr.model.name = "transformer"
    tr.model.embed_dim = 128
    tr.model.num_layers = 2
    tr.model.num_heads = 4
    tr.model.mlp_dim = 256
    tr.model.activation = "gelu"
    tr.model.dropout = 0.1
    tr.model.attention_dropout = 0.0  # PyTorch's twin below gets the same (self_attn.dropout)
    tr.optim.optimizer = "adamw"
    tr.optim.weight_decay = 0.01
    tr.train.batch_size = 64
    tr.data.max_len = 256
    if quick:
        tr.train.batch_size = 16
    return {"bow": validate_config(bow), "transformer": validate_config(tr)}


def synthetic_batch(batch_size: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "tokens": rng.integers(2, VOCAB, size=(batch_size, length)).astype(np.int32),
        "mask": np.ones((batch_size, length), bool),
        "labels": rng.integers(0, CLASSES, size=batch_size).astype(np.int32),
        "weights": np.ones(batch_size, np.float32),
    }


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def transformer_flops(config: dict) -> float:
    """Model FLOPs of one transformer train step (forward + backward = 3 x forward), counted
    from the shapes: per layer 2·B·T·(4·D² + 2·D·F) for the projections and feed-forward, plus
    4·B·T²·D for QKᵀ and PV; the head 2·B·D·C. XLA's cost analysis counts a loop body once, so
    it undercounts the chunked attention kernel; this count does not depend on the kernel."""
    m, batch, length = config["model"], config["train"]["batch_size"], config["data"]["max_len"]
    d, f = m["embed_dim"], m["mlp_dim"]
    per_layer = 2 * batch * length * (4 * d * d + 2 * d * f) + 4 * batch * length**2 * d
    return 3.0 * (m["num_layers"] * per_layer + 2 * batch * d * CLASSES)


def prepare_jax(config: dict, steps_per_block: int, mesh=None) -> dict:
    """jaxnn's jitted train step on ``mesh`` (default: every device), compiled and warmed up.
    Returns {"block": runs steps_per_block steps, "compile_s", "flops_per_step",
    "xla_cost_analysis_flops_per_step", "compiled"}."""
    from jaxnn.models import get_model

    mesh = make_mesh() if mesh is None else mesh
    model = get_model(config, vocab_size=VOCAB, num_classes=CLASSES)
    steps = build_steps(config, model, CLASSES, total_steps=10_000, mesh=mesh)
    state = init_train_state(config, model, steps, mesh, length=16)
    batch_size, length = config["train"]["batch_size"], config["data"]["max_len"]
    batch = shard_batch(synthetic_batch(batch_size, length), mesh)
    start = time.perf_counter()
    compiled = steps.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    xla_flops = _flops(compiled)
    flops = transformer_flops(config) if config["model"]["name"] == "transformer" else xla_flops
    holder = [state]

    def block():
        s = holder[0]
        for _ in range(steps_per_block):
            s = compiled(s, batch)
        jax.block_until_ready(s.step)
        holder[0] = s

    block()  # warmup
    return {
        "block": block,
        "compile_s": compile_s,
        "flops_per_step": flops,
        "xla_cost_analysis_flops_per_step": xla_flops,
        "compiled": compiled,
    }


def step_rates(times: list[float], steps_per_block: int, config: dict, info: dict) -> dict:
    """``info`` with the median step time and the throughputs it gives (FLOP/s too when
    ``info`` holds "flops_per_step")."""
    batch_size, length = config["train"]["batch_size"], config["data"]["max_len"]
    step_s = statistics.median(times) / steps_per_block
    result = {
        **info,
        "step_s": step_s,
        "examples_per_s": batch_size / step_s,
        "tokens_per_s": batch_size * length / step_s,
        "block_times_s": times,
    }
    if "flops_per_step" in info:
        result["flops_per_s"] = info["flops_per_step"] / step_s
    return result


def bench_jax(config: dict, steps_per_block: int, repeats: int, mesh=None) -> dict:
    """Median step time of jaxnn's jitted train step on ``mesh`` (default: every device).
    The result's "compiled" entry is the compiled step (left out of the JSON)."""
    prepared = prepare_jax(config, steps_per_block, mesh)
    times = time_interleaved({"jax": prepared.pop("block")}, repeats)["jax"]
    return step_rates(times, steps_per_block, config, prepared)


def prepare_matmul(n: int = 1024) -> dict:
    """float32 [n, n] @ [n, n] under jit (2 n^3 FLOPs per call), compiled and warmed up."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    return {"n": n, "flops": 2 * n**3, "block": lambda: f(a, b).block_until_ready()}


# ----------------------------------------------------------------------------------------------
# PyTorch: the same models and steps
# ----------------------------------------------------------------------------------------------


def prepare_torch(name: str, config: dict, steps_per_block: int) -> dict | None:
    """The same model and step in PyTorch (eager), warmed up: {"block", "threads", "version"},
    or None when torch is not importable."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    torch.manual_seed(0)
    m = config["model"]
    batch_size, length = config["train"]["batch_size"], config["data"]["max_len"]
    host = synthetic_batch(batch_size, length)
    tokens = torch.from_numpy(host["tokens"]).long()
    mask = torch.from_numpy(host["mask"])
    labels = torch.from_numpy(host["labels"]).long()
    mask32 = (1 << 32) - 1

    def bigram_ids(tok):
        a, b = tok[:, :-1], tok[:, 1:]
        h = (a * 0x9E3779B1 + b) & mask32
        h = h ^ (h >> 16)
        h = (h * 0x85EBCA6B) & mask32
        h = h ^ (h >> 13)
        h = (h * 0xC2B2AE35) & mask32
        h = h ^ (h >> 16)
        return h % m["bigram_buckets"]

    if name == "bow":

        class Bow(nn.Module):
            def __init__(self):
                super().__init__()
                # EmbeddingBag: PyTorch's fused lookup + sum, sparse gradients
                d, buckets = m["embed_dim"], m["bigram_buckets"]
                self.embed = nn.EmbeddingBag(VOCAB, d, mode="sum", sparse=True)
                self.bigram = nn.EmbeddingBag(buckets, d, mode="sum", sparse=True)
                self.head = nn.Linear(d, CLASSES)

            def forward(self, tok, msk):
                bmask = msk[:, :-1] & msk[:, 1:]
                total = self.embed(tok, per_sample_weights=msk.float())
                total = total + self.bigram(bigram_ids(tok), per_sample_weights=bmask.float())
                count = (msk.sum(1) + bmask.sum(1)).clamp(min=1)[:, None]
                return self.head(total / count)

        model = Bow()
        sparse_params = [model.embed.weight, model.bigram.weight]
        dense_opt = torch.optim.Adam(model.head.parameters(), lr=1e-3)
    else:

        class Transformer(nn.Module):
            def __init__(self):
                super().__init__()
                d = m["embed_dim"]
                self.embed = nn.Embedding(VOCAB, d, sparse=True)
                self.position = nn.Embedding(length, d)
                layer = nn.TransformerEncoderLayer(
                    d,
                    m["num_heads"],
                    m["mlp_dim"],
                    dropout=m["dropout"],
                    activation="gelu",
                    batch_first=True,
                    norm_first=True,
                )
                layer.self_attn.dropout = m["attention_dropout"]
                self.encoder = nn.TransformerEncoder(
                    layer, m["num_layers"], enable_nested_tensor=False
                )
                self.norm = nn.LayerNorm(d)
                self.dropout = nn.Dropout(m["dropout"])
                self.head = nn.Linear(d, CLASSES)

            def forward(self, tok, msk):
                x = self.embed(tok) + self.position(torch.arange(tok.shape[1]))[None]
                x = self.dropout(x)
                x = self.encoder(x, src_key_padding_mask=~msk)
                x = self.norm(x)
                pooled = (x * msk[..., None]).sum(1) / msk.sum(1, keepdim=True).clamp(min=1)
                return self.head(self.dropout(pooled))

        model = Transformer()
        sparse_params = [model.embed.weight]
        dense = [p for n, p in model.named_parameters() if n != "embed.weight"]
        dense_opt = torch.optim.AdamW(dense, lr=1e-3, weight_decay=0.01)
    sparse_opt = torch.optim.SparseAdam(sparse_params, lr=1e-3)
    model.train()

    def step():
        dense_opt.zero_grad(set_to_none=True)
        sparse_opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(tokens, mask), labels)
        loss.backward()
        dense_opt.step()
        sparse_opt.step()

    def block():
        for _ in range(steps_per_block):
            step()

    block()  # warmup
    return {"block": block, "threads": torch.get_num_threads(), "version": torch.__version__}


# ----------------------------------------------------------------------------------------------
# Compilations over a real epoch
# ----------------------------------------------------------------------------------------------


def epoch_compilations(corpus: str) -> dict:
    from jaxnn.train.loop import Trainer, load_data

    config = base_config()
    config.data.corpus = corpus
    config.data.max_len = 1024
    config.model.embed_dim = 32
    config.model.bigram_buckets = 2**18
    config.train.batch_size = 32
    config.train.progress_bar = False
    config = validate_config(config)
    data = load_data(config)
    trainer = Trainer(config, data)
    lengths = {
        int(trainer.train_batches.make_batch(i)["tokens"].shape[1])
        for i in trainer.train_batches.order(0)
    }
    state = trainer.init_state()
    start = time.perf_counter()
    state = trainer.run_epoch(state, 0)
    jax.block_until_ready(state.step)
    seconds = time.perf_counter() - start
    compilations = trainer.train_step._cache_size()
    return {
        "corpus": corpus,
        "steps": trainer.steps_per_epoch,
        "buckets": list(trainer.buckets),
        "bucket_lengths_used": sorted(lengths),
        "compilations": int(compilations),
        "epoch_s_including_compiles": seconds,
    }


# ----------------------------------------------------------------------------------------------


def write_outputs(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    rows = [
        "| model | B x T | host allocator | CPU vector width | CPU devices | jaxnn tokens/s | "
        "jaxnn examples/s | compile s | GFLOP/step | matmul GFLOP/s | MFU vs matmul | "
        "PyTorch tokens/s | jaxnn / PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        j, t = r["jax"], r.get("torch")
        ratio = f"{j['tokens_per_s'] / t['tokens_per_s']:.2f}x" if t else "n/a"
        rows.append(
            f"| {name} | {r['batch_size']} x {r['length']} | {r['host_allocator']['mode']} | "
            f"{r['cpu_vector_width']['setting']}: "
            f"{r['cpu_vector_width']['width'] or 'XLA default'} | "
            f"{r['cpu_devices']['setting']}: {r['cpu_devices']['devices']} | "
            f"{j['tokens_per_s']:,.0f} | "
            f"{j['examples_per_s']:,.1f} | {j['compile_s']:.1f} | "
            f"{j['flops_per_step'] / 1e9:.2f} | {r['matmul']['flops_per_s'] / 1e9:.1f} | "
            f"{r['mfu_vs_matmul']:.1%} | "
            + (f"{t['tokens_per_s']:,.0f} | {ratio} |" if t else "n/a | n/a |")
        )
    n = next(iter(results["models"].values()))["matmul"]["n"]
    lines = [
        "# Train-step benchmark (benchmarks/train.py)",
        "",
        f"Devices: {results['devices']}. {results['machine']}. Load average at start: "
        f"{results['load_average']}. Each model ran in its own process under its "
        "host allocator (jaxnn.launch.host_memory; process-wide, so PyTorch's and the "
        "matmul's too)"
        + (
            f", here overridden by $JAXNN_HOST_ALLOCATOR={results['host_allocator_env']}."
            if results["host_allocator_env"]
            else "."
        ),
        "",
        *rows,
        "",
        f"Timing: after warm-up (one untimed round of the three, in the same order), "
        f"{results['repeats']} rounds in which a block of jaxnn steps, the same block in PyTorch "
        f"and a {n}x{n} float32 matmul alternate, so load from other processes hits all three "
        "alike; step figures are medians over the rounds. MFU = model "
        "FLOPs per step (transformer: counted from the shapes; bow: XLA cost analysis) / step "
        "time / the matmul's FLOP/s, its fastest round (the device's dense rate; a median "
        "would let a loaded round flatter MFU).",
    ]
    ep = results.get("epoch")
    if ep:
        lines += [
            "",
            f"One full epoch of {ep['corpus']} ({ep['steps']} steps): {ep['compilations']} "
            f"compilations of the train step; bucket lengths used {ep['bucket_lengths_used']} "
            f"of {ep['buckets']}.",
        ]
    (RESULTS / "train.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(names))
    jax_rates = [results["models"][n]["jax"]["tokens_per_s"] for n in names]
    torch_rates = [
        (results["models"][n].get("torch") or {}).get("tokens_per_s", 0.0) for n in names
    ]
    ax.bar(x - 0.2, jax_rates, 0.4, label="jaxnn (jit)")
    ax.bar(x + 0.2, torch_rates, 0.4, label="PyTorch (eager)")
    ax.set_xticks(x, names)
    ax.set_ylabel("train tokens/s")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("train-step throughput (median)")
    ax2.bar(x, [results["models"][n]["mfu_vs_matmul"] for n in names])
    ax2.axhline(0.4, color="gray", ls="--", label="40% target")
    ax2.set_xticks(x, names)
    ax2.set_ylabel("model FLOP/s / matmul FLOP/s")
    ax2.legend()
    ax2.set_title("utilisation vs dense matmul")
    fig.tight_layout()
    fig.savefig(RESULTS / "train.png", dpi=100)
    plt.close(fig)


def bench_model(name: str, config: dict, repeats: int, with_torch: bool) -> dict:
    """One model's figures, measured in this process: jaxnn's step, PyTorch's twin and the
    matmul, interleaved round by round."""
    per_block = 4 if name == "bow" else 2
    print(f"[{name}] jaxnn and PyTorch, interleaved ...", flush=True)
    matmul = prepare_matmul()
    jax_prepared = prepare_jax(config, per_block)
    jax_prepared.pop("compiled")
    contenders = {"jax": jax_prepared.pop("block"), "matmul": matmul["block"]}
    torch_prepared = prepare_torch(name, config, per_block) if with_torch else None
    if torch_prepared:
        contenders["torch"] = torch_prepared.pop("block")
    # one untimed round first: without it the first timed transformer block, right after
    # PyTorch's set-up, took 1.56 s against ~0.5 s for the others (with it: 0.67 s once in two
    # runs); a median of 7 rounds shrugs off one such round, but not two
    times = time_interleaved(contenders, repeats, warmup=1, settle_s=0.5)
    jax_result = step_rates(times["jax"], per_block, config, jax_prepared)
    torch_result = None
    if torch_prepared:
        torch_result = step_rates(times["torch"], per_block, config, torch_prepared)
    # the device's dense rate: the fastest matmul of the rounds (a loaded round only slows
    # it down, and a slow denominator would flatter MFU)
    matmul_s = min(times["matmul"])
    return {
        "batch_size": config["train"]["batch_size"],
        "length": config["data"]["max_len"],
        "model": config["model"],
        "host_allocator": host_allocator(),
        "cpu_vector_width": cpu_vector_width(),
        "cpu_devices": cpu_devices(),
        "mesh": describe_mesh(make_mesh()),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "jax": jax_result,
        "torch": torch_result,
        "matmul": {
            "n": matmul["n"],
            "seconds": matmul_s,
            "flops_per_s": matmul["flops"] / matmul_s,
        },
        "mfu_vs_matmul": jax_result["flops_per_s"] * matmul_s / matmul["flops"],
        "jax_over_torch_tokens": (
            jax_result["tokens_per_s"] / torch_result["tokens_per_s"] if torch_result else None
        ),
    }


def bench_model_in_subprocess(name: str, args: argparse.Namespace) -> dict:
    """`bench_model` in a fresh Python process, so that the model's process settings
    (`PROCESS_DEFAULTS`, process-wide and applied before JAX's first computation) are the ones
    in force there. Its progress lines stream to this process's output."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        command = [sys.executable, __file__, "--one-model", name, "--one-model-out", str(out)]
        command += ["--repeats", str(args.repeats)] if args.repeats else []
        command += ["--quick"] if args.quick else []
        command += ["--no-torch"] if args.no_torch else []
        if args.cpu_vector_width:
            command += ["--cpu-vector-width", args.cpu_vector_width]
        subprocess.run(command, check=True)
        return json.loads(out.read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 5, --quick 3)")
    parser.add_argument("--epoch-corpus", default="bbc_news", help="'' skips the epoch count")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=("bow", "transformer"),
        default=("bow", "transformer"),
        help="which models to measure (each in its own process)",
    )
    parser.add_argument(
        "--cpu-vector-width",
        choices=CPU_VECTOR_WIDTHS,
        default=None,
        help="XLA:CPU vector width of both models' processes (jaxnn.launch.cpu_vector_width; "
        "default: $JAXNN_CPU_VECTOR_WIDTH, else auto)",
    )
    # internal: measure one model in this process and write its figures to a JSON file
    parser.add_argument("--one-model", choices=("bow", "transformer"), help=argparse.SUPPRESS)
    parser.add_argument("--one-model-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats={args.repeats}; allowed: an integer >= 1")
    repeats = args.repeats or (3 if args.quick else 5)
    if args.one_model:
        config = model_configs(args.quick)[args.one_model]
        configure_process(  # before JAX's first computation; CPU runs only
            cpu_vector_width=args.cpu_vector_width,
            batch_sizes=(config["train"]["batch_size"], config["train"]["eval_batch_size"]),
            defaults=PROCESS_DEFAULTS[args.one_model],
        )
        result = bench_model(args.one_model, config, repeats, not args.no_torch)
        Path(args.one_model_out).write_text(json.dumps(result) + "\n", encoding="utf-8")
        return
    configure_process(cpu_vector_width=args.cpu_vector_width)  # this process: the epoch count
    results = {
        "devices": describe_mesh(make_mesh()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "host_allocator_env": os.environ.get("JAXNN_HOST_ALLOCATOR", ""),
        "repeats": repeats,
        "jax_version": jax.__version__,
        "models": {name: bench_model_in_subprocess(name, args) for name in args.models},
    }
    if args.epoch_corpus:
        print(f"[epoch] {args.epoch_corpus} ...", flush=True)
        results["epoch"] = epoch_compilations(args.epoch_corpus)
        results["epoch"]["host_allocator"] = host_allocator()
    write_outputs(results)
    print((RESULTS / "train.md").read_text())


if __name__ == "__main__":
    main()
