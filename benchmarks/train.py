"""Train-step benchmark: jaxnn's jitted step for the bow and transformer models, beside PyTorch.

    .venv/bin/python benchmarks/train.py [--quick] [--no-torch] [--epoch-corpus bbc_news]
        [--models bow transformer transformer_gpu] [--torch-compile auto|on|off]
        [--out DIR | --commit-results] [--tag NAME]

Models: "bow" (configs/default.py's model), "transformer" (configs/imdb_transformer.py) and
"transformer_gpu" (configs/imdb_transformer_gpu.py, the accelerator workload; measured by
default only on a GPU or TPU). PyTorch runs on the device JAX runs on (CUDA when JAX's backend
is "gpu"; on a TPU it is skipped, with the reason), in the model's compute dtype: bfloat16 /
float16 configs run under torch.autocast, attention is F.scaled_dot_product_attention (SDPA).
torch.compile of the same model is measured too where it works (default: on an accelerator;
``--torch-compile on`` tries it on a CPU), else its row says why not.

For each model, on synthetic full-length batches (every token real):
  - examples/s and tokens/s of the train step (median over timed blocks, after warmup),
  - compile time (lower + compile of the step),
  - model FLOPs per step (bow: XLA's cost analysis of the compiled step; transformer: counted
    from the shapes) and the achieved FLOP/s as a fraction of a dense matmul's rate in the
    model's compute dtype ("MFU vs matmul": the matmul's fastest round in the same run, so load
    cannot flatter it). The matmul is large enough to saturate the device (`matmul_size`:
    8192^3 on a GPU or TPU), so a share above 100 % means the denominator is wrong, and the
    table flags it,
  - the same model and step in PyTorch (when importable): EmbeddingBag/Embedding(sparse=True) +
    SparseAdam for the tables, Adam/AdamW for the rest, same shapes, same threads.
jaxnn's block of steps, PyTorch's and the matmul alternate round by round (time_interleaved), so
the ratios compare runs that saw the same load.
Then one full epoch of real training (`Trainer.run_epoch`) counts the step's compilations, which
must not exceed the number of length buckets.

Each model runs in its own Python process, set up as `python train.py` runs it
(`jaxnn.launch.configure_process`, called before JAX's first computation with the backend that
`probe_backend` found). On a GPU or TPU no CPU process setting (host allocator, XLA:CPU vector
width and devices) is applied. On a CPU, the bag-of-words model runs with the defaults and the
transformers as the CPU recipe of train.py's docstring, `PROCESS_DEFAULTS`: freed host blocks
kept (``--host_allocator=keep``) and one XLA:CPU device per core (``--cpu_devices=cores``), the
step data parallel over the cores and waiting for each step as train.py does. The settings are
process-wide, so the PyTorch twin and the matmul of that process run under them too;
$JAXNN_HOST_ALLOCATOR and $JAXNN_CPU_DEVICES, when set, override them. ``--cpu-vector-width``
(else $JAXNN_CPU_VECTOR_WIDTH, else "auto") sets XLA:CPU's vector width of every process, and the
table names what each process came to. The matmul runs on one of the devices, which still uses
every core (XLA splits a dense matmul over its worker pool).

Writes train[.TAG].json, .md and .png into runs/benchmarks/ (``--out``), or into
benchmarks/results/ with ``--commit-results``. Timings on a shared 2-core CPU are noisy: only
medians and ratios measured in the same run are reported; nothing here passes or fails.
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

# --- every use of jaxnn in this script goes through these imports -----------------------------
from jaxnn.launch import Backend, configure_process  # noqa: E402
from jaxnn.launch.cpu_devices import cpu_devices  # noqa: E402
from jaxnn.launch.cpu_vector_width import SETTINGS as CPU_VECTOR_WIDTHS  # noqa: E402
from jaxnn.launch.cpu_vector_width import cpu_vector_width  # noqa: E402
from jaxnn.launch.host_memory import host_allocator  # noqa: E402
from jaxnn.train.config import (  # noqa: E402
    base_config,
    config_from_file,
    config_to_dict,
    validate_config,
)
from jaxnn.train.distributed import describe_mesh, make_mesh, shard_batch  # noqa: E402
from jaxnn.train.loop import load_data  # noqa: E402
from jaxnn.train.trainer import Trainer, build_steps, init_train_state  # noqa: E402

# ------------------------------------------------------------------------------------------------

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_OUT = ROOT / "runs" / "benchmarks"
MODELS = ("bow", "transformer", "transformer_gpu")
CONFIG_FILES = {
    "bow": "default.py",
    "transformer": "imdb_transformer.py",
    "transformer_gpu": "imdb_transformer_gpu.py",
}
VOCAB = 30000
CLASSES = 2


# each model's CPU process settings (jaxnn.launch.configure_process's ``defaults``, below the
# environment's; applied on a CPU only): the transformers as train.py's docstring runs them on a
# CPU (--cpu_devices=cores --host_allocator=keep: data parallel over the cores, freed blocks kept)
TRANSFORMER_CPU_RECIPE = {"cpu_devices": "cores", "host_allocator": "keep"}
PROCESS_DEFAULTS = {
    "bow": {},
    "transformer": TRANSFORMER_CPU_RECIPE,
    "transformer_gpu": TRANSFORMER_CPU_RECIPE,
}


def model_configs(quick: bool) -> dict[str, dict]:
    """The benchmarked settings: default.py's bow model (on 256-token batches), and the models,
    batch sizes and lengths of imdb_transformer.py and imdb_transformer_gpu.py. ``quick``
    shrinks the batches (and the GPU workload's length) so a CPU run takes seconds."""
    bow = base_config()
    bow.model.name = "bow"
    bow.model.embed_dim = 32
    bow.model.bigram_buckets = 2**20
    bow.optim.optimizer = "adam"
    bow.train.batch_size = 32
    bow.data.max_len = 256
    configs = {"bow": bow}
    for name in ("transformer", "transformer_gpu"):
        config = config_from_file(ROOT / "configs" / CONFIG_FILES[name])
        # PyTorch's twin below gets the same attention dropout (0: fused attention kernels)
        config.model.attention_dropout = 0.0
        configs[name] = config
    if quick:
        configs["transformer"].train.batch_size = 16
        configs["transformer_gpu"].train.batch_size = 2
        configs["transformer_gpu"].data.max_len = 64
    return {name: validate_config(config) for name, config in configs.items()}


def default_models(backend: str) -> tuple[str, ...]:
    """The models measured by default: the accelerator workload only on an accelerator."""
    return MODELS if backend in ("gpu", "tpu") else ("bow", "transformer")


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


def matmul_size(backend: str, quick: bool = False) -> int:
    """n of the [n, n] @ [n, n] matmul whose rate is the denominator of "MFU vs matmul": large
    enough to saturate the device (8192 on a GPU or TPU; on a CPU 2048, about a second of a
    2-core CPU's time for a round; 1024 with ``quick``)."""
    if backend in ("gpu", "tpu"):
        return 8192
    return 1024 if quick else 2048


def compute_dtype(config: dict) -> str:
    """The model's compute dtype name ("float32", "bfloat16", "float16"; "auto" resolved for
    the current backend: bfloat16 on an accelerator, float32 on a CPU)."""
    dtype = str(config["model"]["dtype"])
    if dtype == "auto":
        return "float32" if jax.default_backend() == "cpu" else "bfloat16"
    return dtype


def prepare_matmul(n: int, dtype: str = "float32", calls: int = 1) -> dict:
    """``calls`` x [n, n] @ [n, n] in ``dtype`` under jit (2 n^3 FLOPs each), compiled and
    warmed up; its "block" runs them and waits."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()

    def block():
        out = None
        for _ in range(calls):
            out = f(a, b)
        out.block_until_ready()

    return {"n": n, "dtype": dtype, "calls": calls, "flops": 2 * n**3 * calls, "block": block}


# ----------------------------------------------------------------------------------------------
# PyTorch: the same models and steps
# ----------------------------------------------------------------------------------------------


def torch_device(backend: str) -> tuple[str | None, str]:
    """(PyTorch device for JAX's ``backend``, or None, and why not): "cuda" for "gpu" when
    torch sees CUDA, "cpu" for "cpu"."""
    try:
        import torch
    except ImportError:
        return None, "torch is not importable"
    if backend == "cpu":
        return "cpu", ""
    if backend == "gpu":
        if torch.cuda.is_available():
            return "cuda", ""
        return None, f"JAX runs on the GPU but torch {torch.__version__} has no CUDA device"
    return None, f"no PyTorch peer on JAX's backend {backend!r}"


def _torch_models(name: str, config: dict, length: int):
    """The PyTorch twin of ``name`` (bow / transformer): an nn.Module class and the names of
    its sparse (SparseAdam) tables."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    m = config["model"]
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

        return Bow, ("embed.weight", "bigram.weight")

    d, heads, p = m["embed_dim"], m["num_heads"], m["dropout"]
    p_attn = m["attention_dropout"]
    act = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[
        m["activation"]
    ]

    class Block(nn.Module):
        """jaxnn.nn.TransformerEncoderBlock: x + drop(Attn(LN(x))), x + drop(MLP(LN(x))) with
        dropout on the MLP's hidden layer; attention by F.scaled_dot_product_attention."""

        def __init__(self):
            super().__init__()
            self.norm_1, self.norm_2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
            self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc_1, self.fc_2 = nn.Linear(d, m["mlp_dim"]), nn.Linear(m["mlp_dim"], d)

        def forward(self, x, attn_mask):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.norm_1(x)).view(b, t, 3, heads, d // heads).unbind(2)
            h = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                attn_mask=attn_mask,
                dropout_p=p_attn if self.training else 0.0,
            )
            x = x + F.dropout(self.out(h.transpose(1, 2).reshape(b, t, d)), p, self.training)
            h = F.dropout(act(self.fc_1(self.norm_2(x))), p, self.training)
            return x + F.dropout(self.fc_2(h), p, self.training)

    sparse = bool(config["optim"]["sparse_embeddings"])

    class Transformer(nn.Module):
        """jaxnn.models.TransformerClassifier: token + position embeddings, dropout, pre-LN
        blocks, final LayerNorm, masked mean pooling, dropout, linear head."""

        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, d, sparse=sparse)
            self.position = nn.Embedding(length, d)
            self.blocks = nn.ModuleList(Block() for _ in range(m["num_layers"]))
            self.norm = nn.LayerNorm(d, eps=1e-6)  # flax.linen.LayerNorm's epsilon
            self.head = nn.Linear(d, CLASSES)
            self.all_real = False  # set True when every token of the batches is real

        def forward(self, tok, msk):
            positions = torch.arange(tok.shape[1], device=tok.device)
            x = F.dropout(self.embed(tok) + self.position(positions)[None], p, self.training)
            # keys that are padding masked out; none when every token is real (as in these
            # synthetic batches: `all_real`, found once, not per step), which lets SDPA pick
            # its fused kernels
            attn_mask = None if self.all_real else msk[:, None, None, :]
            for block in self.blocks:
                x = block(x, attn_mask)
            x = self.norm(x)
            weights = msk[..., None].to(x.dtype)
            pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
            return self.head(F.dropout(pooled, p, self.training))

    return Transformer, ("embed.weight",) if sparse else ()


def prepare_torch(
    name: str, config: dict, steps_per_block: int, *, compile_model: bool = False
) -> dict:
    """The same model and step in PyTorch on JAX's device, warmed up: {"block", "threads",
    "version", "device", "autocast", "compiled"}, or {"skipped": reason}.

    Compute dtype: the config's (bfloat16 / float16 under torch.autocast, float32 without);
    parameters and optimizer state float32, as jaxnn's. With ``compile_model`` each encoder
    block is compiled with torch.compile (its first calls compile it: the warm-up block)."""
    device, why = torch_device(jax.default_backend())
    if device is None:
        return {"skipped": why}
    import torch
    from torch import nn

    torch.manual_seed(0)
    batch_size, length = config["train"]["batch_size"], config["data"]["max_len"]
    host = synthetic_batch(batch_size, length)
    tokens = torch.from_numpy(host["tokens"]).long().to(device)
    mask = torch.from_numpy(host["mask"]).to(device)
    labels = torch.from_numpy(host["labels"]).long().to(device)
    cls, sparse_names = _torch_models(name, config, length)
    model = cls().to(device)
    model.all_real = bool(host["mask"].all())
    sparse_params = [p for n, p in model.named_parameters() if n in sparse_names]
    dense = [p for n, p in model.named_parameters() if n not in sparse_names]
    optim = config["optim"]
    if optim["optimizer"] == "adamw":
        dense_opt = torch.optim.AdamW(dense, lr=1e-3, weight_decay=optim["weight_decay"])
    else:
        dense_opt = torch.optim.Adam(dense, lr=1e-3)
    sparse_opt = torch.optim.SparseAdam(sparse_params, lr=1e-3) if sparse_params else None
    dtype = compute_dtype(config)
    autocast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if compile_model:
        if name == "bow":
            return {
                "skipped": "bow: its step is sparse EmbeddingBag lookups and SparseAdam, "
                "which torch.compile leaves to eager"
            }
        # each block compiled (Module.compile, in place): the embedding's sparse gradient
        # stays outside the graphs, as torch.compile cannot trace sparse tensors
        for module in model.blocks:
            module.compile()
    forward = model
    model.train()
    scaler = torch.amp.GradScaler(device_type) if dtype == "float16" else None

    def step():
        dense_opt.zero_grad(set_to_none=True)
        if sparse_opt:
            sparse_opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = forward(tokens, mask)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        if scaler is None:
            loss.backward()
            dense_opt.step()
            if sparse_opt:
                sparse_opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(dense_opt)
            if sparse_opt:
                scaler.step(sparse_opt)
            scaler.update()

    def block():
        for _ in range(steps_per_block):
            step()
        if device_type == "cuda":
            torch.cuda.synchronize()

    try:
        start = time.perf_counter()
        block()  # warmup (and torch.compile's compilation)
        warmup_s = time.perf_counter() - start
    except Exception as error:  # torch.compile is not available everywhere
        if not compile_model:
            raise
        return {"skipped": f"torch.compile failed: {type(error).__name__}: {error}"[:500]}
    return {
        "block": block,
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
        "device": str(torch.cuda.get_device_name() if device_type == "cuda" else device),
        "autocast": str(autocast_dtype).replace("torch.", "") if autocast_dtype else "off",
        "compiled": compile_model,
        "first_block_s": warmup_s,
    }


# ----------------------------------------------------------------------------------------------
# Compilations over a real epoch
# ----------------------------------------------------------------------------------------------


def epoch_compilations(corpus: str) -> dict:
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


def _torch_cell(entry: dict | None) -> tuple[str, str]:
    """(tokens/s, why-not) cells of a PyTorch entry."""
    if entry is None:
        return "n/a", "not run"
    if "skipped" in entry:
        return "n/a", entry["skipped"]
    return f"{entry['tokens_per_s']:,.0f}", ""


def markdown(results: dict) -> str:
    """The results as the Markdown report (table, timing notes, skipped peers, epoch count)."""
    rows = [
        "| model | B x T | dtype | host allocator | CPU vector width | CPU devices | "
        "jaxnn tokens/s | jaxnn examples/s | compile s | GFLOP/step | matmul TFLOP/s | "
        "MFU vs matmul | PyTorch tokens/s | jaxnn / PyTorch | torch.compile tokens/s | "
        "jaxnn / torch.compile |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name, r in results["models"].items():
        j = r["jax"]
        torch_rate, torch_why = _torch_cell(r.get("torch"))
        compiled_rate, compiled_why = _torch_cell(r.get("torch_compile"))
        ratio = f"{r['jax_over_torch_tokens']:.2f}x" if r.get("jax_over_torch_tokens") else "n/a"
        ratio_c = (
            f"{r['jax_over_torch_compile_tokens']:.2f}x"
            if r.get("jax_over_torch_compile_tokens")
            else "n/a"
        )
        mfu = f"{r['mfu_vs_matmul']:.1%}" + (
            " (**> 100 %: denominator too small**)" if r["mfu_vs_matmul"] > 1.0 else ""
        )
        rows.append(
            f"| {name} | {r['batch_size']} x {r['length']} | {r['dtype']} | "
            f"{r['host_allocator']['mode']} | "
            f"{r['cpu_vector_width']['setting']}: "
            f"{r['cpu_vector_width']['width'] or 'XLA default'} | "
            f"{r['cpu_devices']['setting']}: {r['cpu_devices']['devices']} | "
            f"{j['tokens_per_s']:,.0f} | {j['examples_per_s']:,.1f} | {j['compile_s']:.1f} | "
            f"{j['flops_per_step'] / 1e9:.2f} | {r['matmul']['flops_per_s'] / 1e12:.3f} | "
            f"{mfu} | {torch_rate} | {ratio} | {compiled_rate} | {ratio_c} |"
        )
        for label, why in (("PyTorch", torch_why), ("torch.compile", compiled_why)):
            if why:
                notes.append(f"- {name}, {label}: {why}")
        t = r.get("torch") or {}
        if "device" in t:
            notes.append(
                f"- {name}, PyTorch {t['version']} on {t['device']} ({t['threads']} threads), "
                f"autocast {t['autocast']}"
                + (", attention F.scaled_dot_product_attention" if name != "bow" else "")
            )
    first = next(iter(results["models"].values()))["matmul"]
    lines = [
        "# Train-step benchmark (benchmarks/train.py)",
        "",
        f"Backend {results.get('backend', 'cpu')}. Devices: {results['devices']}. "
        f"{results['machine']}. Load average at start: "
        f"{results['load_average']}. "
        + (
            "Each model ran in its own process with train.py's CPU process settings for it "
            "(jaxnn.launch.configure_process: the transformers with --cpu_devices=cores "
            "--host_allocator=keep; process-wide, so PyTorch's and the matmul's too)"
            + (
                f", here overridden by $JAXNN_HOST_ALLOCATOR={results['host_allocator_env']}."
                if results["host_allocator_env"]
                else "."
            )
            if results.get("backend", "cpu") == "cpu"
            else "Each model ran in its own process; no CPU process setting applies on "
            f"{results['backend']}."
        ),
        "",
        *rows,
        "",
        f"Timing: after warm-up (one untimed round, in the same order), "
        f"{results['repeats']} rounds in which a block of jaxnn steps, the same block in PyTorch "
        f"(and torch.compile) and {first['calls']} x {first['n']}^3 matmul(s) in the model's "
        "dtype alternate, so load from other processes hits all alike; step figures are "
        "medians over the rounds. MFU = model FLOPs per step (transformer: counted from the "
        "shapes; bow: XLA cost analysis) / step time / the matmul's FLOP/s, its fastest round "
        "(the device's dense rate; a median would let a loaded round flatter MFU).",
    ]
    if notes:
        lines += ["", *notes]
    ep = results.get("epoch")
    if ep:
        lines += [
            "",
            f"One full epoch of {ep['corpus']} ({ep['steps']} steps): {ep['compilations']} "
            f"compilations of the train step; bucket lengths used {ep['bucket_lengths_used']} "
            f"of {ep['buckets']}.",
        ]
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, out_dir: Path = DEFAULT_OUT, tag: str = "") -> Path:
    """train[.tag].json, .md and .png into ``out_dir``; returns the Markdown's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "train" + (f".{tag}" if tag else "")
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(markdown(results), encoding="utf-8")
    try:
        import matplotlib
    except ImportError:
        return md_path
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(names))
    rate = lambda entry: (entry or {}).get("tokens_per_s", 0.0)
    ax.bar(x - 0.27, [rate(results["models"][n]["jax"]) for n in names], 0.27, label="jaxnn")
    ax.bar(x, [rate(results["models"][n].get("torch")) for n in names], 0.27, label="PyTorch")
    ax.bar(
        x + 0.27,
        [rate(results["models"][n].get("torch_compile")) for n in names],
        0.27,
        label="torch.compile",
    )
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
    fig.savefig(out_dir / f"{stem}.png", dpi=100)
    plt.close(fig)
    return md_path


def bench_model(
    name: str,
    config: dict,
    repeats: int,
    with_torch: bool,
    *,
    torch_compile: str = "auto",
    quick: bool = False,
) -> dict:
    """One model's figures, measured in this process: jaxnn's step, PyTorch's twin (eager, and
    torch.compile per ``torch_compile``: "on", "off", "auto" = on an accelerator) and the
    matmul, interleaved round by round."""
    backend = jax.default_backend()
    accelerator = backend in ("gpu", "tpu")
    per_block = (10 if accelerator else 4) if name == "bow" else (5 if accelerator else 2)
    dtype = compute_dtype(config)
    print(f"[{name}] jaxnn and PyTorch, interleaved ...", flush=True)
    matmul = prepare_matmul(matmul_size(backend, quick), dtype, calls=10 if accelerator else 1)
    jax_prepared = prepare_jax(config, per_block)
    jax_prepared.pop("compiled")
    contenders = {"jax": jax_prepared.pop("block"), "matmul": matmul["block"]}
    peers: dict[str, dict | None] = {"torch": None, "torch_compile": None}
    if with_torch:
        peers["torch"] = prepare_torch(name, config, per_block)
        if torch_compile == "on" or (torch_compile == "auto" and accelerator):
            if "skipped" in peers["torch"]:
                peers["torch_compile"] = dict(peers["torch"])
            else:
                print(f"[{name}] torch.compile ...", flush=True)
                peers["torch_compile"] = prepare_torch(name, config, per_block, compile_model=True)
        else:
            peers["torch_compile"] = {
                "skipped": f"torch.compile is off here (--torch-compile {torch_compile}; "
                "auto = on a GPU)"
            }
    for key, prepared in peers.items():
        if prepared and "block" in prepared:
            contenders[key] = prepared.pop("block")
    # one untimed round first: without it the first timed transformer block, right after
    # PyTorch's set-up, took 1.56 s against ~0.5 s for the others (with it: 0.67 s once in two
    # runs); a median of 7 rounds shrugs off one such round, but not two
    times = time_interleaved(contenders, repeats, warmup=1, settle_s=0.0 if accelerator else 0.5)
    jax_result = step_rates(times["jax"], per_block, config, jax_prepared)
    for key, prepared in peers.items():
        if prepared and key in times:
            peers[key] = step_rates(times[key], per_block, config, prepared)
    # the device's dense rate: the fastest matmul of the rounds (a loaded round only slows
    # it down, and a slow denominator would flatter MFU)
    matmul_s = min(times["matmul"])
    ratio = lambda peer: (
        jax_result["tokens_per_s"] / peer["tokens_per_s"]
        if peer and "tokens_per_s" in peer
        else None
    )
    return {
        "batch_size": config["train"]["batch_size"],
        "length": config["data"]["max_len"],
        "dtype": dtype,
        "model": config_to_dict(config)["model"],
        "host_allocator": host_allocator(),
        "cpu_vector_width": cpu_vector_width(),
        "cpu_devices": cpu_devices(),
        "mesh": describe_mesh(make_mesh()),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "jax": jax_result,
        "torch": peers["torch"],
        "torch_compile": peers["torch_compile"],
        "matmul": {
            "n": matmul["n"],
            "dtype": matmul["dtype"],
            "calls": matmul["calls"],
            "seconds": matmul_s,
            "flops_per_s": matmul["flops"] / matmul_s,
        },
        "mfu_vs_matmul": jax_result["flops_per_s"] * matmul_s / matmul["flops"],
        "jax_over_torch_tokens": ratio(peers["torch"]),
        "jax_over_torch_compile_tokens": ratio(peers["torch_compile"]),
    }


def probe_backend() -> str:
    """JAX's default backend, found in a short-lived subprocess, so that this process can
    decide its process settings (CPU-only ones on a CPU) before its own JAX starts, and holds
    no accelerator memory while the models' processes run."""
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.default_backend())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return probe.stdout.strip().splitlines()[-1]


def probed(platform_name: str) -> Backend:
    """The `Backend` record of ``platform_name``, as `probe_backend` found it."""
    return Backend(platform_name, "JAX's default backend, probed in a subprocess")


def process_settings(name: str, config, args: argparse.Namespace):
    """Model ``name``'s process settings, applied in its process before JAX's first computation
    (`jaxnn.launch.configure_process` with `PROCESS_DEFAULTS`; nothing on a GPU or TPU).
    Returns the `ProcessSettings` record."""
    train = config["train"]
    return configure_process(
        cpu_vector_width=args.cpu_vector_width,
        batch_sizes=(train["batch_size"], train["eval_batch_size"]),
        defaults=PROCESS_DEFAULTS[name],
        backend=probed(args.backend),
    )


def bench_model_in_subprocess(name: str, args: argparse.Namespace) -> dict:
    """`bench_model` in a fresh Python process, so that the model's process settings
    (`PROCESS_DEFAULTS`, process-wide and applied before JAX's first computation; none on an
    accelerator) are the ones in force there. Its progress lines stream to this process's
    output."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        command = [sys.executable, __file__, "--one-model", name, "--one-model-out", str(out)]
        command += ["--repeats", str(args.repeats)] if args.repeats else []
        command += ["--quick"] if args.quick else []
        command += ["--no-torch"] if args.no_torch else []
        if args.cpu_vector_width:
            command += ["--cpu-vector-width", args.cpu_vector_width]
        command += ["--torch-compile", args.torch_compile, "--backend", args.backend]
        subprocess.run(command, check=True)
        return json.loads(out.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 5, --quick 3)")
    parser.add_argument("--epoch-corpus", default="bbc_news", help="'' skips the epoch count")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=None,
        help="which models to measure, each in its own process (default: bow and transformer; "
        "on a GPU or TPU transformer_gpu too)",
    )
    parser.add_argument(
        "--torch-compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="also measure torch.compile of the PyTorch twin (auto: on a GPU)",
    )
    parser.add_argument(
        "--cpu-vector-width",
        choices=CPU_VECTOR_WIDTHS,
        default=None,
        help="XLA:CPU vector width of every model's process on a CPU "
        "(jaxnn.launch.cpu_vector_width; default: $JAXNN_CPU_VECTOR_WIDTH, else auto)",
    )
    parser.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--commit-results", action="store_true", help="write into benchmarks/results/"
    )
    parser.add_argument("--tag", default="", help="train.TAG.json / .md / .png")
    # internal: measure one model in this process and write its figures to a JSON file
    parser.add_argument("--one-model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--one-model-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="cpu", help=argparse.SUPPRESS)  # probe_backend()
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats={args.repeats}; allowed: an integer >= 1")
    repeats = args.repeats or (3 if args.quick else 5)
    if args.one_model:
        config = model_configs(args.quick)[args.one_model]
        process_settings(args.one_model, config, args)  # before JAX's first computation
        result = bench_model(
            args.one_model,
            config,
            repeats,
            not args.no_torch,
            torch_compile=args.torch_compile,
            quick=args.quick,
        )
        Path(args.one_model_out).write_text(json.dumps(result) + "\n", encoding="utf-8")
        return
    # This process starts no JAX backend before the models' processes have run: on a GPU it
    # would hold most of the device's memory while they measure.
    args.backend = probe_backend()
    # this process: the epoch count, with train.py's defaults (nothing on an accelerator)
    configure_process(cpu_vector_width=args.cpu_vector_width, backend=probed(args.backend))
    models = args.models or default_models(args.backend)
    load_average = [round(x, 2) for x in os.getloadavg()]
    measured = {name: bench_model_in_subprocess(name, args) for name in models}
    results = {
        "backend": args.backend,
        "devices": next(iter(measured.values()))["mesh"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": load_average,
        "host_allocator_env": os.environ.get("JAXNN_HOST_ALLOCATOR", ""),
        "repeats": repeats,
        "jax_version": jax.__version__,
        "models": measured,
    }
    if args.epoch_corpus:
        print(f"[epoch] {args.epoch_corpus} ...", flush=True)
        results["epoch"] = epoch_compilations(args.epoch_corpus)
        results["epoch"]["host_allocator"] = host_allocator()
    out = Path(args.out) if args.out else (RESULTS if args.commit_results else DEFAULT_OUT)
    md_path = write_outputs(results, out, args.tag)
    print(md_path.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
