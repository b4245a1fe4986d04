"""Peak temporary memory of attention fwd+bwd, read from the compiled program (nothing runs).

    python benchmarks/attention_memory.py                 # B=1, N=8, H=64, float32, T = 8192
    python benchmarks/attention_memory.py --seq-lens 8192 65536 --impls chunked

XLA's memory_analysis() of the jitted gradient with respect to q, k and v: the "reference"
implementation holds [B, N, T, S] score arrays, "chunked" only O(T·H) per head plus its blocks.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from jaxnn.launch import configure_process
from jaxnn.ops import dot_product_attention


def temp_mib(impl: str, batch: int, seq_len: int, heads: int, head_dim: int, dtype) -> float:
    """Temporary bytes (MiB) of the compiled fwd+bwd of one implementation."""
    spec = jax.ShapeDtypeStruct((batch, seq_len, heads, head_dim), dtype)

    def loss(q, k, v):
        return dot_product_attention(q, k, v, implementation=impl).astype(jnp.float32).sum()

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return grad.lower(spec, spec, spec).compile().memory_analysis().temp_size_in_bytes / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[8192])
    parser.add_argument("--impls", nargs="+", default=["auto", "reference", "xla", "chunked"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    print(f"fwd+bwd temporary memory, B={args.batch} N={args.heads} H={args.head_dim} {args.dtype}")
    print("| T | " + " | ".join(args.impls) + " |")
    print("|---|" + "---:|" * len(args.impls))
    for seq_len in args.seq_lens:
        cells = [
            f"{temp_mib(impl, args.batch, seq_len, args.heads, args.head_dim, dtype):,.1f} MiB"
            for impl in args.impls
        ]
        print(f"| {seq_len} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    configure_process()  # CPU process settings from the environment, before JAX starts
    main()
