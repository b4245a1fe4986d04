"""Benchmark jaxnn.ops.dot_product_attention implementations (and torch SDPA when importable).

Runs unchanged on CPU, GPU or TPU. For every shape and case (plain, causal, key-padded) it
reports, per implementation ("auto" included: what the models run) and for the forward and
the forward+backward pass: compile time, the min / median / max of repeated timings after
warm-up (jax.block_until_ready; the repetitions of all implementations of one shape are
interleaved, so load from other processes hits them alike), achieved FLOP/s (forward
4·B·N·T·S·H, forward+backward 3.5× that; the causal and padded cases count only the visible
(query, key) pairs, the work a kernel that skips masked blocks must do) and
its share of the device's dense matmul rate measured in the same run with matmuls large
enough to saturate it (8192³ on an accelerator, 2048³ on a CPU), and the peak temporary
memory of the compiled executable (memory_analysis()). torch SDPA is timed per backend it
has (flash / memory-efficient / cuDNN / math, through torch.nn.attention.sdpa_kernel), on the
device JAX uses; when torch is skipped the report says why.

    python benchmarks/attention.py --quick          # about a minute on 2 CPU cores
    python benchmarks/attention.py                  # T = 128, 512, 2048
    python benchmarks/attention.py --full           # T = 128 … 16384, H ∈ {64, 128}, f32+bf16
    python benchmarks/attention.py --long           # T = 65536 fwd+bwd, chunked vs reference

Writes runs/benchmarks/attention[.TAG].{json,md,png} (untracked); with --commit-results,
benchmarks/results/attention[.TAG].* instead (--full: tag "full"; --long: "long"). On an
accelerator the default dtype is bfloat16, on a CPU float32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # timing.py, also when imported
from timing import time_interleaved

from jaxnn.launch import configure_process
from jaxnn.launch.host_memory import host_allocator
from jaxnn.ops.attention import dot_product_attention

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"  # committed, with --commit-results only
SCRATCH = ROOT / "runs" / "benchmarks"  # git-ignored default
CASES = ("plain", "causal", "padded")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def attention_flops(batch, heads, t_len, s_len, head_dim, mode, case="plain"):
    """4·N·H·(visible (query, key) pairs) forward, 3.5× that forward+backward."""
    if case == "causal":  # query t sees keys 0..t (top-left aligned)
        pairs = batch * sum(min(t + 1, s_len) for t in range(t_len))
    elif case == "padded":
        pairs = t_len * sum(case_kwargs(case, batch, s_len)["key_lengths"].tolist())
    else:
        pairs = batch * t_len * s_len
    forward = 4 * heads * pairs * head_dim
    return forward if mode == "fwd" else 3.5 * forward


def peak_matmul_size() -> int:
    """Matmul side that saturates the device: 8192 on an accelerator, 2048 on a CPU (where
    larger products run at the same rate and take seconds each)."""
    return 2048 if jax.default_backend() == "cpu" else 8192


def matmul_runner(dtype, size):
    """A call of a dense [size, size] @ [size, size] product in ``dtype`` on the default device
    (blocking), to time beside the kernels."""
    x = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
    fn = jax.jit(lambda a, b: jnp.dot(a, b))
    return lambda: jax.block_until_ready(fn(x, x))


def matmul_rate(dtype, size, reps=10):
    """Dense matmul FLOP/s through JAX on the default device, in ``dtype``: the fastest of
    ``reps`` calls."""
    times = time_interleaved({"matmul": matmul_runner(dtype, size)}, reps, 2)
    return 2 * size**3 / min(times["matmul"])


def case_kwargs(case, batch, t_len):
    """Keyword arguments of dot_product_attention for a case: key padding keeps the first
    3/4 of the keys of even examples and all of odd ones (at least 1)."""
    if case == "causal":
        return {"is_causal": True}
    if case == "padded":
        lengths = [t_len if b % 2 else max(1, 3 * t_len // 4) for b in range(batch)]
        return {"key_lengths": jnp.asarray(lengths, jnp.int32)}
    return {}


def jax_case(impl, mode, dropout=0.0, kwargs=None):
    """jit(fn)(q, k, v, cot): the output (fwd) or the gradients wrt q, k, v of Σ out·cot
    (attention dropout at rate ``dropout`` with a fixed key; "reference", "chunked" and "auto"
    only)."""
    rng = jax.random.key(2) if dropout > 0.0 else None
    attend = lambda q, k, v: dot_product_attention(
        q, k, v, implementation=impl, dropout_rate=dropout, dropout_rng=rng, **(kwargs or {})
    )
    if mode == "fwd":
        return jax.jit(lambda q, k, v, cot: attend(q, k, v))
    loss = lambda q, k, v, cot: jnp.sum((attend(q, k, v) * cot).astype(jnp.float32))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def prepare_jax(impl, mode, shape, dtype, args, case="plain"):
    """(record, run): compile time and temporary memory, and a callable that runs it once."""
    batch, heads, t_len, head_dim = shape
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    make = lambda key: jax.random.normal(key, (batch, t_len, heads, head_dim), jnp.float32)
    q, k, v = (make(key).astype(dtype) for key in (kq, kk, kv))
    cot = make(jax.random.key(1)).astype(dtype)  # a fixed random cotangent
    fn = jax_case(impl, mode, args.dropout, case_kwargs(case, batch, t_len))
    start = time.perf_counter()
    try:
        lowered = fn.lower(q, k, v, cot)
        compiled = lowered.compile()
    except Exception as error:  # an implementation that cannot run here says why
        status = f"unsupported: {type(error).__name__}: {str(error).splitlines()[0]}"
        return {"status": status}, None
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp = None if memory is None else int(memory.temp_size_in_bytes)
    record = {"compile_s": compile_s, "temp_bytes": temp}
    if temp is not None and temp > args.max_memory_gib * 2**30:
        record["status"] = f"skipped: needs {temp / 2**30:.1f} GiB temporary memory"
        return record, None
    return record, lambda: jax.block_until_ready(compiled(q, k, v, cot))


TORCH_BACKENDS = ("flash", "efficient", "cudnn", "math")


def torch_skip_reason() -> str | None:
    """Why torch SDPA cannot be compared on JAX's device (None when it can)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install torch)"
    backend = jax.default_backend()
    if backend == "gpu" and not torch.cuda.is_available():
        return "JAX runs on a GPU but this torch build has no CUDA device"
    if backend not in ("cpu", "gpu"):
        return f"JAX runs on {backend!r}, which torch does not run on"
    return None


def torch_impls() -> list[str]:
    """torch SDPA backends to time: every fused one on a GPU; on a CPU torch's flash kernel
    (its CPU default) and the math path."""
    if jax.default_backend() == "gpu":
        return [f"torch-{name}" for name in ("flash", "efficient", "cudnn")]
    return ["torch-flash", "torch-math"]


def prepare_torch(impl, mode, shape, dtype_name, dropout=0.0, case="plain"):
    """(record, run) for torch's scaled_dot_product_attention restricted to one backend."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[impl.removeprefix("torch-")]
    batch, heads, t_len, head_dim = shape
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    dtype = getattr(torch, dtype_name)
    make = lambda: torch.randn(batch, heads, t_len, head_dim, device=device, dtype=dtype)
    q, k, v = make(), make(), make()
    cot = make()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    kwargs = {"dropout_p": dropout}
    if case == "causal":
        kwargs["is_causal"] = True
    elif case == "padded":
        lengths = case_kwargs(case, batch, t_len)["key_lengths"].tolist()
        keys = torch.arange(t_len, device=device)
        lengths = torch.tensor(lengths, device=device)
        kwargs["attn_mask"] = (keys[None, :] < lengths[:, None])[:, None, None, :]

    def run():
        with sdpa_kernel(backend):
            if mode == "fwd":
                with torch.no_grad():
                    sdpa(q, k, v, **kwargs)
            else:
                for x in (q, k, v):
                    x.grad = None
                    x.requires_grad_(True)
                sdpa(q, k, v, **kwargs).backward(cot)
        sync()

    record = {
        "compile_s": 0.0,
        "temp_bytes": None,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_device": device,
    }
    try:
        run()  # a backend that cannot take this case (flash with a mask, ...) says so here
    except RuntimeError as error:
        record["status"] = f"unsupported: {str(error).strip().splitlines()[0][:160]}"
        return record, None
    return record, run


def default_impls():
    backend = jax.default_backend()
    impls = ["auto", "reference", "chunked", "xla"]
    if backend == "gpu":
        impls += ["cudnn", "pallas"]
    if backend == "tpu":
        impls += ["pallas"]
    return impls


def run(args):
    impls = args.impls or default_impls()
    device = jax.devices()[0]
    header = {
        "backend": jax.default_backend(),
        "device": str(getattr(device, "device_kind", device)),
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "host_allocator": host_allocator()["mode"],
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv[1:],
        "matmul_flops": {},
        "matmul_size": args.peak_size,
        "torch_skipped": args.torch_skipped,
    }
    if args.torch_skipped:
        print(f"torch SDPA skipped: {args.torch_skipped}", flush=True)
    for dtype_name in args.dtypes:
        rate = matmul_rate(DTYPES[dtype_name], args.peak_size)
        header["matmul_flops"][dtype_name] = rate
        print(
            f"dense {args.peak_size}^3 matmul {dtype_name}: {rate / 1e9:.1f} GFLOP/s",
            flush=True,
        )
    records = []
    for dtype_name in args.dtypes:
        for head_dim in args.head_dims:
            for batch in args.batch:
                for heads in args.heads:
                    for t_len in args.seq_lens:
                        shape = (batch, heads, t_len, head_dim)
                        for case in args.cases:
                            for mode in args.modes:
                                records += bench_shape(
                                    args, impls, header, shape, mode, dtype_name, case
                                )
    # The matmul also ran in every round of every shape (bench_shape), so the denominator is the
    # fastest call of the whole run: a loaded moment cannot deflate it and inflate every share.
    for dtype_name in args.dtypes:
        rate = max(
            matmul_rate(DTYPES[dtype_name], args.peak_size), header["matmul_flops"][dtype_name]
        )
        header["matmul_flops"][dtype_name] = rate
        for rec in records:
            if rec.get("status") == "ok" and rec["dtype"] == dtype_name:
                rec["matmul_share"] = rec["flops"] / rate
        print(
            f"dense {args.peak_size}^3 matmul {dtype_name}, fastest in the run: "
            f"{rate / 1e9:.1f} GFLOP/s"
        )
    return {"header": header, "results": records}


def bench_shape(args, impls, header, shape, mode, dtype_name, case="plain"):
    """Records of every implementation (and torch) on one shape, case and mode, timed
    interleaved."""
    batch, heads, t_len, head_dim = shape
    pending, runners = {}, {}
    with_torch = torch_impls() if args.torch and not args.torch_skipped else []
    for impl in [*impls, *with_torch]:
        key = dict(impl=impl, mode=mode, case=case, batch=batch, heads=heads)
        key.update(t_len=t_len, s_len=t_len, head_dim=head_dim, dtype=dtype_name)
        if too_slow(args.history, key, args.max_seconds):
            rec, run = {"status": "skipped: extrapolated time too long"}, None
        elif impl.startswith("torch-"):
            rec, run = prepare_torch(impl, mode, shape, dtype_name, args.dropout, case)
        else:
            rec, run = prepare_jax(impl, mode, shape, DTYPES[dtype_name], args, case)
        pending[impl] = {**key, **rec}
        if run is not None:
            runners[impl] = run
    # the denominator's matmul in the same rounds, under the same load (see run())
    runners["_matmul"] = matmul_runner(DTYPES[dtype_name], args.peak_size)
    times = time_interleaved(runners, args.reps, args.warmup, settle_s=args.settle)
    matmul_times = times.pop("_matmul")
    header["matmul_flops"][dtype_name] = max(
        header["matmul_flops"][dtype_name], 2 * args.peak_size**3 / min(matmul_times)
    )
    # Peak resident memory of this whole process so far (Linux reports KiB).
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    records = []
    for impl, rec in pending.items():
        if impl in times:
            median = statistics.median(times[impl])
            flops = attention_flops(batch, heads, t_len, t_len, head_dim, mode, case)
            rec.update(status="ok", median_s=median, times_s=times[impl])
            rec.update(min_s=min(times[impl]), max_s=max(times[impl]))
            rec.update(process_peak_rss_bytes=peak_rss, flops=flops / median)
            rec["matmul_share"] = rec["flops"] / header["matmul_flops"][dtype_name]
        records.append(rec)
        args.history.append(rec)
        print(format_record(rec), flush=True)
    return records


def too_slow(records, key, max_seconds):
    """Skip a run whose time, extrapolated as T² from the same series, exceeds max_seconds."""
    same = [
        r
        for r in records
        if r.get("status") == "ok"
        and all(r[name] == key[name] for name in key if name not in ("t_len", "s_len"))
    ]
    if not same:
        return False
    last = max(same, key=lambda r: r["t_len"])
    estimate = last["median_s"] * (key["t_len"] / last["t_len"]) ** 2
    return estimate > max_seconds


def format_record(rec):
    base = (
        f"{rec['impl']:>15s} {rec['mode']:>6s} {rec.get('case', 'plain'):>6s} "
        f"B={rec['batch']} N={rec['heads']} "
        f"T={rec['t_len']:>6d} "
        f"H={rec['head_dim']} {rec['dtype']:>8s}"
    )
    if rec.get("status") != "ok":
        return f"{base}  {rec.get('status')}"
    temp = rec.get("temp_bytes")
    temp_s = "" if temp is None else f" temp {temp / 2**20:9.1f} MiB"
    return (
        f"{base}  {rec['median_s'] * 1e3:10.2f} ms "
        f"[{rec['min_s'] * 1e3:.2f}-{rec['max_s'] * 1e3:.2f}]  {rec['flops'] / 1e9:7.1f} GFLOP/s "
        f"({100 * rec['matmul_share']:5.1f}% of matmul)  compile {rec['compile_s']:5.2f} s{temp_s}"
    )


def write_markdown(report, path):
    header, results = report["header"], report["results"]
    lines = [
        "# Attention benchmark",
        "",
        f"Device: {header['device']} ({header['backend']}, {header['cpu_count']} CPUs), "
        f"jax {header['jax']}, host allocator {header.get('host_allocator', 'system')}, "
        f"{header['date']}. Command: "
        f"`python benchmarks/attention.py {' '.join(header['argv'])}`",
        "",
        f"Dense {header.get('matmul_size', 2048)}³ matmul in the same run (the denominator of "
        "each share): "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in header["matmul_flops"].items()),
        "",
        *(
            [f"torch SDPA skipped: {header['torch_skipped']}.", ""]
            if header.get("torch_skipped")
            else []
        ),
        "Each cell: median time [min–max over the repetitions], achieved GFLOP/s (forward "
        "4·N·H per visible (query, key) pair, fwd+bwd 3.5×) with its share of "
        "the matmul rate and, for JAX implementations, peak temporary memory of the compiled "
        "executable. torch-X is torch SDPA restricted to its X backend. "
        "'a/b speed' = time(b) / time(a): above 1 means a is faster. On a shared machine "
        "compare ratios within one run (the repetitions of one shape are interleaved across "
        "implementations); the matmul rate above shows how loaded it was.",
        "",
    ]
    impls = list(dict.fromkeys(r["impl"] for r in results))
    groups = {}
    for r in results:
        group = (r["dtype"], r["head_dim"], r["batch"], r["heads"], r.get("case", "plain"))
        groups.setdefault((*group, r["mode"]), {}).setdefault(r["t_len"], {})[r["impl"]] = r
    for (dtype, head_dim, batch, heads, case, mode), by_t in groups.items():
        lines.append(f"## {mode}, {case}, B={batch}, N={heads}, H={head_dim}, {dtype}")
        lines.append("")
        ratios = [("chunked", "xla"), ("auto", "xla"), ("auto", "torch-flash")]
        cols = [*impls, *(f"{a}/{b} speed" for a, b in ratios if a in impls and b in impls)]
        lines.append("| T | " + " | ".join(cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for t_len, row in sorted(by_t.items()):
            cells = []
            for impl in impls:
                r = row.get(impl)
                if r is None:
                    cells.append("")
                elif r.get("status") != "ok":
                    cells.append(r["status"].split(":")[0])
                else:
                    mem = r.get("temp_bytes")
                    mem_s = "" if mem is None else f", {mem / 2**20:.0f} MiB"
                    cells.append(
                        f"{r['median_s'] * 1e3:.1f} ms [{r['min_s'] * 1e3:.1f}–"
                        f"{r['max_s'] * 1e3:.1f}], {r['flops'] / 1e9:.0f} GF/s "
                        f"({100 * r['matmul_share']:.0f} %){mem_s}"
                    )
            for a, b in ratios:
                if a in impls and b in impls:
                    ra, rb = row.get(a), row.get(b)
                    ok = ra and rb and ra.get("status") == "ok" and rb.get("status") == "ok"
                    cells.append(f"{rb['median_s'] / ra['median_s']:.2f}×" if ok else "")
            lines.append(f"| {t_len} | " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines))


def write_plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in report["results"] if r.get("status") == "ok"]
    series = {}
    for r in results:
        key = (r["dtype"], r["head_dim"], r["batch"], r["heads"], r.get("case", "plain"))
        series.setdefault(key, {}).setdefault(r["mode"], {}).setdefault(r["impl"], []).append(
            (r["t_len"], r["median_s"])
        )
    if not series:
        return
    key = next(iter(series))  # the first configuration of the sweep
    modes = series[key]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for ax, (mode, by_impl) in zip(axes[0], modes.items()):
        for impl, points in sorted(by_impl.items()):
            points.sort()
            ax.plot(*zip(*points), marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (= S)")
        ax.set_ylabel("median time (s)")
        ax.set_title(f"{mode}, {key[4]}: B={key[2]}, N={key[3]}, H={key[1]}, {key[0]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"dot_product_attention on {report['header']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    preset = p.add_mutually_exclusive_group()
    preset.add_argument(
        "--quick",
        action="store_true",
        help="T ∈ {256, 1024}, B=1, N=4, fwd+bwd, 3 repetitions: about a minute on 2 idle "
        "CPU cores",
    )
    preset.add_argument(
        "--full", action="store_true", help="T = 128 … 16384, H ∈ {64, 128}, f32 + bf16"
    )
    preset.add_argument(
        "--long", action="store_true", help="T = 65536 fwd+bwd: chunked vs reference"
    )
    p.add_argument("--seq-lens", type=int, nargs="+")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--heads", type=int, nargs="+", default=[8])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64])
    p.add_argument(
        "--dtypes",
        nargs="+",
        choices=list(DTYPES),
        help="default: bfloat16 on an accelerator, float32 on a CPU",
    )
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument(
        "--peak-size",
        type=int,
        help="side of the peak-rate matmul (default 8192 on an accelerator, 2048 on a CPU)",
    )
    p.add_argument(
        "--commit-results",
        action="store_true",
        help="write to benchmarks/results/ (tracked) instead of runs/benchmarks/",
    )
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    p.add_argument("--impls", nargs="+", help="default: every implementation the backend has")
    p.add_argument("--no-torch", dest="torch", action="store_false", help="skip torch SDPA")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="attention dropout rate (reference, chunked and torch; the others report "
        "unsupported); use with --tag",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=0.2,
        help="seconds of untimed sleep before each timed call (lets the previous contender's "
        "spinning worker threads go idle)",
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=30.0, help="skip runs extrapolated longer")
    p.add_argument("--max-memory-gib", type=float, default=16.0, help="skip larger executables")
    p.add_argument("--tag", default=None, help="suffix of the output files")
    args = p.parse_args(argv)
    if args.dtypes is None:
        args.dtypes = ["float32"] if jax.default_backend() == "cpu" else ["bfloat16"]
        if args.full:
            args.dtypes = ["float32", "bfloat16"]
    args.peak_size = args.peak_size or peak_matmul_size()
    args.torch_skipped = torch_skip_reason() if args.torch else "--no-torch"
    if not 0.0 <= args.dropout < 1.0:
        p.error(f"--dropout={args.dropout} is not allowed; allowed: a rate in [0, 1)")
    if args.quick:
        args.seq_lens = args.seq_lens or [256, 1024]
        args.heads = [4] if args.heads == [8] else args.heads
        args.reps, args.settle = min(args.reps, 3), min(args.settle, 0.05)
        if args.modes == ["fwd", "fwdbwd"]:  # compiling dominates: one mode, 24 programs
            args.modes = ["fwdbwd"]
    elif args.full:
        args.seq_lens = args.seq_lens or [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
        if args.head_dims == [64]:
            args.head_dims = [64, 128]
        args.batch = args.batch if args.batch != [1] else [1, 4]
        args.tag = args.tag or "full"
    elif args.long:
        args.seq_lens = args.seq_lens or [65536]
        args.modes = ["fwdbwd"]
        args.impls = args.impls or ["reference", "chunked"]
        args.torch, args.torch_skipped = False, "--long compares chunked with reference only"
        args.cases = ["plain"]
        args.reps, args.warmup = 1, 0
        args.max_seconds = math.inf
        args.tag = args.tag or "long"
    args.seq_lens = args.seq_lens or [128, 512, 2048]
    args.history = []  # records so far, for too_slow
    return args


def main(argv=None):
    args = parse_args(argv)
    report = run(args)
    folder = RESULTS if args.commit_results else SCRATCH
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / ("attention" + (f".{args.tag}" if args.tag else ""))
    path = lambda suffix: stem.parent / (stem.name + suffix)
    path(".json").write_text(json.dumps(report, indent=1, default=float))
    write_markdown(report, path(".md"))
    write_plot(report, path(".png"))
    print(f"wrote {stem}.json, .md, .png")


if __name__ == "__main__":
    configure_process()  # CPU process settings from the environment, before JAX starts
    main()
