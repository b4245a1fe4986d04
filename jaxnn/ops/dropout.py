"""Dropout: "dropout = 0.3" zeroes 30% of the units at each training pass.

    keep_i ~ Bernoulli(1 - rate) independently,   y_i = keep_i · x_i / (1 - rate)

Scaling the survivors by 1/(1 - rate) ("inverted dropout", Srivastava et al. 2014) keeps the
expectation E[y_i] = x_i, so nothing changes at evaluation time, where dropout is the identity.

The keep mask compares one 16-bit uniform integer per element with a threshold. The integers
come from the Threefry-2x32 hash (Salmon et al. 2011, the `jax.random` default; written out
round by round here, the same bits as JAX's) of a counter: one hash call gives two 32-bit words,
i.e. four 16-bit draws. `jax.random.bernoulli`
spends a whole hash on every element (and, with the default partitionable layout, one per
element with 64-bit counters), which on a CPU made dropout about a quarter of a small
Transformer's training step; this costs about 1/4 to 1/6 of that. The price: the drop
probability is ``rate`` rounded to a multiple of 2^-16 (at most 7.7e-6 away), and the scale
uses that rounded probability, so E[y] = x holds exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "bits16_at",
    "counter_grid",
    "counters_fit",
    "dropout",
    "is_threefry_key",
    "keep_rule",
    "keep_threshold",
    "key_words",
    "rate_free_trials",
    "rate_free_trials_of",
    "static_rate",
    "traced_keep_threshold",
    "uniform_bits16",
]

_LEVELS = 1 << 16  # 16-bit draws: the drop threshold is rate · 2^16, rounded

# (count, trials) of the enclosing `rate_free_trials`; part of jax.jit's cache key
_RATE_FREE = jax.make_user_context(default_value=None)


@contextlib.contextmanager
def rate_free_trials(count: int, *, trials: int) -> Iterator[None]:
    """Trace a ``jax.vmap`` over ``trials`` whose first ``count`` have dropout rate 0.

    Under vmap each trial's rate is traced, so code that skips dropout for a static 0 (a
    sequential run's model) cannot; a batching rule that sees all trials at once can, if told
    which ones. Inside this context `rate_free_trials_of` gives such rules the count:
    `jaxnn.ops.embedding_bag_sum` then pools those trials without the mask, as their own runs
    would, and the others with it (jaxnn.tune.trials.TrialGroup orders its trials by rate and
    traces its step in here). Other dropout (`dropout`) still applies each trial's rate.

    It acts when a function is traced, and it is part of ``jax.jit``'s cache key
    (``jax.make_user_context``): a jitted function called inside it and outside it is traced
    for each. Any vmapped axis of size ``trials`` inside it counts as the trials' axis. It is
    a promise about the values passed: a nonzero rate among the first ``count`` would be
    ignored by those trials' bag sums.
    """
    count, trials = int(count), int(trials)
    if not 0 <= count <= trials:
        raise ValueError(f"count must be in [0, trials={trials}]; got {count}")
    with _RATE_FREE((count, trials)):
        yield


def rate_free_trials_of(axis_size: int) -> int:
    """How many leading trials of a vmapped axis of ``axis_size`` have rate 0: the count of the
    enclosing `rate_free_trials` when its trials equal ``axis_size``, else 0 (not known)."""
    told = _RATE_FREE.value
    return told[0] if told is not None and told[1] == axis_size else 0


def static_rate(rate: float | jax.Array) -> float | None:
    """``rate`` as a Python float when it is concrete, None when it is traced (e.g. one rate per
    trial under ``jax.vmap``): callers skip work a static 0 makes useless. A concrete rate is
    checked: ValueError unless a scalar in [0, 1]."""
    if jnp.ndim(rate) != 0:
        raise ValueError(f"rate must be a scalar; got shape {jnp.shape(rate)}")
    try:
        value = float(rate)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None
    if not 0.0 <= value <= 1.0:  # also False for NaN
        raise ValueError(f"rate={rate!r}; allowed: a probability in [0, 1]")
    return value


def is_threefry_key(rng: jax.Array) -> bool:
    """Whether ``rng`` is a Threefry key (the jax.random default), typed or raw [2]."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return "threefry" in str(jax.random.key_impl(rng))
    return rng.shape == (2,) and "threefry" in str(jax.config.jax_default_prng_impl)


def _row_major_counter(shape: tuple[int, ...]) -> jax.Array:
    """uint32 [*shape]: each position's row-major index, built from iotas (so an array sharded
    along any axis computes its own slice of the counter, with no communication)."""
    counter = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in range(len(shape) - 1, -1, -1):
        counter = counter + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride *= shape[axis]
    return counter


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotl(x: jax.Array, r: int) -> jax.Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), the hash of ``jax.random``'s default
    key, written out round by round in uint32 arithmetic: the same bits as JAX's
    ``threefry2x32_p`` (tests/ops/test_dropout.py checks both against a NumPy transcription).

    On a CPU, JAX lowers that primitive to a rolled loop of five 4-round steps (a while loop
    XLA cannot fuse or vectorise across); unrolled, a [64, 256, 128] dropout mask takes 4.0
    instead of 7.0 ms and a bow trial with dropout trains about 20 % faster (same bits). On
    GPU and TPU JAX unrolls the same rounds itself.
    """
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for step in range(5):
        for r in _ROTATIONS[step % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(step + 1) % 3]
        x1 = x1 + ks[(step + 2) % 3] + np.uint32(step + 1)
    return x0, x1


def uniform_bits16(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Independent uniform uint16 draws of ``shape`` from a `jax.random` key.

    With a Threefry key (the default), the last axis is grouped in fours: group g of row r (its
    row-major index c over the shape [..., ceil(L/4)]) is the hash Threefry-2x32(key, (c, 0)) =
    (w0, w1), and its four draws are the low and high 16 bits of w0, then of w1 (element 4g+j
    takes draw j; the unused draws of a last partial group are dropped). Other key
    implementations fall back to ``jax.random.bits(rng, shape, uint16)``, as do arrays of 2^34
    elements or more (where the 32-bit counter would wrap).
    """
    shape = tuple(int(n) for n in shape)
    if not shape:
        return uniform_bits16(rng, (1,))[0]
    if not is_threefry_key(rng) or not counters_fit(shape):
        return jax.random.bits(rng, shape, jnp.uint16)
    draws = bits16_at(key_words(rng), _row_major_counter(counter_grid(shape)))
    return draws[..., : shape[-1]]


def counter_grid(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The Threefry counters behind `uniform_bits16`'s draws of ``shape`` [..., L]: one per
    group of four along the last axis, [..., ceil(L / 4)], numbered row-major."""
    return (*shape[:-1], -(-shape[-1] // 4))


def counters_fit(shape: tuple[int, ...]) -> bool:
    """Whether the counters of ``shape`` fit in 32 bits (else `uniform_bits16` falls back to
    ``jax.random.bits``, whose draws a blocked kernel cannot regenerate)."""
    return math.prod(counter_grid(shape)) < 2**32


def key_words(rng: jax.Array) -> jax.Array:
    """The two uint32 words of a Threefry ``jax.random`` key (new-style typed or raw [2])."""
    return jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng


def bits16_at(key: jax.Array, counter: jax.Array) -> jax.Array:
    """uint16 [..., 4·G] draws of the uint32 counters [..., G]: counter c gives the four draws
    (low, high 16 bits of w0, then of w1) of Threefry-2x32(key, (c, 0)) = (w0, w1).

    `uniform_bits16` draws an array's bits from its row-major counters; a blocked kernel
    (jaxnn.ops.attention's "chunked" dropout) computes any block's counters and gets the same
    bits without drawing the whole array.
    """
    words = _threefry2x32(key[0], key[1], counter, jnp.zeros_like(counter))
    # each uint32 word -> [..., 2] uint16 (low half first on every platform JAX supports)
    halves = [lax.bitcast_convert_type(w, jnp.uint16) for w in words]
    return jnp.concatenate(halves, axis=-1).reshape((*counter.shape[:-1], 4 * counter.shape[-1]))


def keep_threshold(rate: float) -> tuple[int, float]:
    """(τ, scale) of a static rate in (0, 1): keep a draw u iff u >= τ, survivors x scale."""
    threshold = min(round(rate * _LEVELS), _LEVELS - 1)
    return threshold, _LEVELS / (_LEVELS - threshold)


def traced_keep_threshold(rate: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(τ int32, scale float32) of traced rates (any shape): `keep_threshold` elementwise, for
    rates clipped to [0, 1], where rate = 1 gives τ = 2^16 (keep nothing) and scale 0."""
    rate = jnp.clip(jnp.asarray(rate, jnp.float32), 0.0, 1.0)
    threshold = jnp.round(rate * _LEVELS).astype(jnp.int32)
    threshold = jnp.where(rate < 1.0, jnp.minimum(threshold, _LEVELS - 1), _LEVELS)
    # threshold = 2^16 keeps nothing; guard the unused 1/0 so no inf reaches the graph.
    kept_levels = (_LEVELS - threshold).astype(jnp.float32)
    return threshold, jnp.where(kept_levels > 0, _LEVELS / jnp.maximum(kept_levels, 1.0), 0.0)


def dropout(
    x: jax.Array,
    rate: float | jax.Array,
    rng: jax.Array | None,
    deterministic: bool = False,
) -> jax.Array:
    """Zero each element of x independently with probability ``rate``; scale the rest by 1/(1-rate).

        u_i ~ Uniform{0, ..., 2^16 - 1} (`uniform_bits16`),  τ = round(rate · 2^16)
        keep_i = u_i >= τ,   y_i = keep_i · x_i · 2^16 / (2^16 - τ)

    so an element is dropped with probability τ / 2^16 (``rate`` to within 2^-17; for
    0 < rate < 1, τ is kept within [0, 2^16 - 1], so something always survives) and E[y] = x.

    Args:
      x: any shape [...], floating dtype (kept).
      rate: probability of dropping an element. A Python (or NumPy, or concrete JAX) scalar
        is validated: outside [0, 1] raises ValueError, 0 returns x unchanged and 1 returns
        zeros (no 0/0). A *traced* scalar (e.g. one rate per trial under ``jax.vmap``) cannot
        be checked at trace time: it must lie in [0, 1] by the caller's guarantee (a value
        below 0 keeps everything; above 1 drops everything); rate = 1 still gives zeros,
        not NaN, and a zero gradient. A traced rate draws the same mask as the same static one.
      rng: a ``jax.random`` key; unused (may be None) when deterministic or rate is 0 or 1.
      deterministic: True returns x unchanged (evaluation mode).

    Returns:
      Same shape and dtype as x, with E[output] = x.
    """
    x = jnp.asarray(x)
    static = static_rate(rate)
    if deterministic or static == 0.0:
        return x
    if static == 1.0:
        return jnp.zeros_like(x)
    if rng is None:
        raise ValueError(f"rng is None but dropout with rate={rate!r} needs a jax.random key")
    threshold, scale = keep_rule(rate)
    keep = uniform_bits16(rng, x.shape).astype(jnp.int32) >= threshold
    return jnp.where(keep, x * scale, 0).astype(x.dtype)


def keep_rule(rate: float | jax.Array) -> tuple[int | jax.Array, float | jax.Array]:
    """(τ, scale) of `dropout` at ``rate``: keep a draw u iff u >= τ, survivors x scale.

    A static rate is checked as `dropout` checks it (ValueError outside [0, 1]; 1 gives
    τ = 2^16, keep nothing, scale 0); a traced one is clipped (`traced_keep_threshold`). For
    code that applies the rule to `uniform_bits16` draws itself (e.g. a blocked kernel)."""
    static = static_rate(rate)
    if static is None:
        return traced_keep_threshold(rate)
    if static == 1.0:
        return _LEVELS, 0.0
    return keep_threshold(static)
