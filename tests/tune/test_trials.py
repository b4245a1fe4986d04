"""jaxnn/tune/trials.py: K trials vmapped through the ordinary train step = the K trials run one
after another through the ordinary step (each with its own config), to float32 tolerance.

The sequential reference is independent of the vmapping: ``vmap=False`` builds each trial's
model with its own (static) dropout rate and optimizer, as ``train.py`` would, and runs the
plain jitted `jaxnn.train.step.make_train_step`.
"""

import re

import jax
import numpy as np
import pytest

from jaxnn.analysis.synthetic import xor_corpus
from jaxnn.data import prepare
from jaxnn.train.config import base_config
from jaxnn.tune.trials import TrialGroup, shared_signature

METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1")


@pytest.fixture(scope="module")
def data():
    corpus = xor_corpus(num_train=96, num_validation=64, neutral=30, length=10, seed=1)
    return prepare(corpus, max_len=16, cache=False)


def config(**over):
    cfg = base_config()
    cfg.data.max_len = 16
    cfg.data.sort_pool = 0
    cfg.model.hidden_size = 8
    cfg.model.embed_dim = 6
    cfg.train.batch_size = 16
    cfg.train.num_epochs = 2
    cfg.train.eval_batch_size = 32
    cfg.train.progress_bar = False
    for path, value in over.items():
        section, name = path.split("__")
        cfg[section][name] = value
    return cfg


def assert_same_runs(a, b, rtol=2e-5, atol=2e-6, params_atol=1e-5):
    assert a.failure == b.failure
    assert [len(h) for h in a.history] == [len(h) for h in b.history]
    for ha, hb in zip(a.history, b.history):
        for ra, rb in zip(ha, hb):
            for key in METRICS:
                np.testing.assert_allclose(ra[key], rb[key], rtol=rtol, atol=atol, err_msg=key)
    assert a.best_epoch == b.best_epoch
    for got, want in ((a.last_variables, b.last_variables), (a.best_variables, b.best_variables)):
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=params_atol), got, want
        )


HYPER = {
    "learning_rate": [1e-2, 3e-2, 1e-2, 5e-2],
    "dropout": [0.0, 0.3, 0.5, 0.0],
    "weight_decay": [0.0, 1e-3, 0.0, 1e-2],
}


# Unmarked cases: 2 trials (one with dropout), 2 steps per epoch: each compiles a handful of
# small programs. The 4-trial grid and the other optimizers are marked slow.
HYPER2 = {"learning_rate": [1e-2, 5e-2], "dropout": [0.3, 0.0], "weight_decay": [1e-3, 0.0]}
# one dropout rate for the whole group: the vmapped program builds it into the model (static)
HYPER2_ONE_RATE = {**HYPER2, "dropout": [0.3, 0.3]}


@pytest.mark.parametrize(
    "over, hyper",
    [
        ({"optim__optimizer": "adamw"}, HYPER2),  # decoupled weight decay (optax)
        ({"optim__optimizer": "adam", "optim__sparse_embeddings": True}, HYPER2_ONE_RATE),
        pytest.param({"optim__optimizer": "adam"}, HYPER, marks=pytest.mark.slow),  # l2
        pytest.param(  # 2 programs of 2 trials, ordered by dropout rate, then put back
            {"optim__optimizer": "adam", "optim__sparse_embeddings": True, "per_program": 2},
            HYPER,
            marks=pytest.mark.slow,
        ),
        pytest.param(
            {"optim__optimizer": "sgd", "optim__momentum": 0.9, "optim__grad_clip_norm": 1.0},
            HYPER,
            marks=pytest.mark.slow,  # each case compiles 4 programs (one per dropout rate)
        ),
    ],
    ids=["adamw-decoupled", "sparse-adam", "adam-l2-4", "sparse-adam-4", "sgd-clip-4"],
)
def test_vmapped_equals_sequential_ordinary_steps(data, over, hyper):
    over = dict(over)
    per_program = over.pop("per_program", None)
    steps = 0 if hyper is HYPER else 2
    cfg = config(**over, train__max_steps_per_epoch=steps)
    seeds = [0] * len(hyper["learning_rate"])  # one seed: the group shares the dropout draws
    vmapped = TrialGroup(cfg, data, vmap=True, trials_per_program=per_program).fit(hyper, seeds)
    sequential = TrialGroup(cfg, data, vmap=False).fit(hyper, seeds)
    assert_same_runs(vmapped, sequential)
    # the trials did differ: each got its own hyperparameters
    finals = {round(h[-1]["train_loss"], 6) for h in vmapped.history}
    assert len(finals) == len(seeds)


@pytest.mark.slow
def test_vmapped_equals_sequential_with_seeds_and_sample_weights(data):
    """Trials of different seeds (own init, own dropout keys) and bootstrap weights."""
    cfg = config()
    seeds = [3, 4, 5]
    hyper = {k: v[:3] for k, v in HYPER.items()}
    weights = np.random.default_rng(0).poisson(1.0, size=(3, len(data.train))).astype(np.float32)
    vmapped = TrialGroup(cfg, data, vmap=True).fit(
        hyper, seeds, sample_weights=weights, keep_probs=True
    )
    sequential = TrialGroup(cfg, data, vmap=False).fit(
        hyper, seeds, sample_weights=weights, keep_probs=True
    )
    assert_same_runs(vmapped, sequential)
    assert vmapped.probs["validation"].shape == (2, 3, len(data.validation), data.num_classes)
    np.testing.assert_allclose(
        vmapped.probs["validation"], sequential.probs["validation"], rtol=1e-4, atol=1e-5
    )


@pytest.mark.slow
def test_transformer_trials_tune_vmapped(data):
    """Any model: 2 transformer trials (dropout 0.1 / 0.0, two learning rates) vmapped."""
    cfg = config(
        model__name="transformer",
        model__embed_dim=8,
        model__num_heads=2,
        model__mlp_dim=16,
        model__num_layers=1,
        train__max_steps_per_epoch=3,
    )
    hyper = {"learning_rate": [1e-3, 3e-3], "dropout": [0.1, 0.0], "weight_decay": [0.0, 1e-3]}
    vmapped = TrialGroup(cfg, data, vmap=True).fit(hyper, [0, 0])
    sequential = TrialGroup(cfg, data, vmap=False).fit(hyper, [0, 0])
    # Adam divides by sqrt(v): a parameter whose gradient is float32 noise (~1e-9, summed in
    # another order under vmap) moves by up to lr per step either way, so after 6 steps at
    # lr <= 3e-3 the parameters agree to 2e-3, the metrics to float32 tolerance
    assert_same_runs(vmapped, sequential, params_atol=2e-3)
    assert [r["step"] for r in vmapped.history[0]] == [3, 6]


def test_signature_groups_array_hyperparameters_only():
    base = config()
    same = config(optim__learning_rate=0.5, model__dropout=0.2, optim__weight_decay=1e-3)
    other = config(model__embed_dim=12)
    assert shared_signature(base.to_dict()) == shared_signature(same.to_dict())
    assert shared_signature(base.to_dict()) != shared_signature(other.to_dict())


def test_bad_hyperparameters_are_named(data):
    group = TrialGroup(config(), data)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        group.fit({"lr": [0.1]}, [0])
    with pytest.raises(ValueError, match="dropout must be in"):
        group.fit({"dropout": [1.0]}, [0])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        group.fit({"learning_rate": [0.1]}, [0, 1])


@pytest.mark.parametrize(
    ("backend", "allocator", "expected"),
    [("cpu", "keep", 8), ("cpu", "system", 4), ("gpu", "keep", 0), ("tpu", "system", 0)],
)
def test_default_trials_per_program_follows_backend_and_host_memory(
    monkeypatch, backend, allocator, expected
):
    """8 trials per program on a CPU whose freed host memory is kept (the tuning entry points'
    default), 4 without; every trial in one program on an accelerator."""
    from jaxnn.tune import trials

    monkeypatch.setattr(trials.jax, "default_backend", lambda: backend)
    monkeypatch.setattr(trials, "host_allocator", lambda: {"mode": allocator})
    assert trials._default_trials_per_program() == expected


def test_tuning_entry_points_default_to_kept_host_memory():
    """python -m jaxnn.tune, the bias-variance tool and benchmarks/tune.py pass
    TUNING_DEFAULTS; it is a valid set of defaults and, off the CPU, applies nothing."""
    from pathlib import Path

    from jaxnn.launch import TUNING_DEFAULTS, Backend, configure_process

    assert TUNING_DEFAULTS == {"host_allocator": "keep"}
    settings = configure_process(defaults=TUNING_DEFAULTS, backend=Backend("gpu", "given"))
    assert settings.applied == () and settings.get("host_allocator") is None
    import ast

    root = Path(__file__).resolve().parents[2]
    for path in ("jaxnn/tune/__main__.py", "jaxnn/analysis/bias_variance.py", "benchmarks/tune.py"):
        calls = [
            node
            for node in ast.walk(ast.parse((root / path).read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "configure_process"
        ]
        assert calls and all(
            any(
                k.arg == "defaults" and getattr(k.value, "id", "") == "TUNING_DEFAULTS"
                for k in call.keywords
            )
            for call in calls
        ), path


def test_trial_group_takes_the_default_trials_per_program(data, monkeypatch):
    from jaxnn.tune import trials

    monkeypatch.setattr(trials, "host_allocator", lambda: {"mode": "keep"})
    assert TrialGroup(config(), data).trials_per_program == 8
    monkeypatch.setattr(trials, "host_allocator", lambda: {"mode": "system"})
    assert TrialGroup(config(), data).trials_per_program == 4
    assert TrialGroup(config(), data, trials_per_program=3).trials_per_program == 3


@pytest.mark.parametrize("dtype, axis", [("float32", 1), ("float16", 0)])
def test_vmapped_tables_are_stored_trial_minor_except_under_a_loss_scale(data, dtype, axis):
    """Sparse tables and their moments at vmap axis 1 ([V, K, D]); with float16's loss scale
    (a per-trial lax.cond, a select over trials-first operands) they stay at axis 0."""
    group = TrialGroup(config(optim__sparse_embeddings=True, model__dtype=dtype), data)
    assert group.tables
    tree = {"params": {name: {"embedding": 0} for name in group.tables}, "step": 0}
    axes = group._trial_axes(tree)
    assert [axes["params"][n]["embedding"] for n in group.tables] == [axis] * len(group.tables)
    assert axes["step"] == 0


def test_a_mixed_group_tells_the_step_its_rate_free_trials(data, monkeypatch):
    """Trials ordered by dropout rate: the vmapped step is traced under
    `jaxnn.ops.dropout.rate_free_trials` with the count of rate-0 trials, which lead, so
    their bag sums skip the mask as their sequential runs do."""
    from jaxnn.tune import trials

    told = []
    real = trials.rate_free_trials

    def spy(count, *, trials):
        told.append((count, trials))
        return real(count, trials=trials)

    monkeypatch.setattr(trials, "rate_free_trials", spy)
    cfg = config(optim__sparse_embeddings=True, train__num_epochs=1, train__max_steps_per_epoch=1)
    group = TrialGroup(cfg, data, trials_per_program=0)
    hyper = {"learning_rate": [1e-2] * 5, "dropout": [0.3, 0.0, 0.5, 0.0, 0.0]}
    out = group.fit(hyper, [0] * 5)
    assert told == [(3, 5)]
    assert all(h and np.isfinite(h[-1]["train_loss"]) for h in out.history)
    # own seeds: own dropout draws per trial, so the bag sums cannot share a pass; none is told
    group.fit(hyper, [0, 1, 2, 3, 4])
    assert told == [(3, 5), (0, 5)]


def test_best_variables_are_picked_per_trial_along_each_leafs_trial_axis():
    """`_where` keeps, per trial, the new or the old values, with the trial axis given per leaf
    (a vmapped group's tables are [V, K, D])."""
    from jaxnn.tune.trials import _where

    rng = np.random.default_rng(0)
    new = {"table": rng.normal(size=(5, 3, 2)), "bias": rng.normal(size=(3, 4))}
    new = jax.tree.map(np.float32, new)
    old = {"table": rng.normal(size=(5, 3, 2)), "bias": rng.normal(size=(3, 4))}
    old = jax.tree.map(np.float32, old)
    mask = np.array([True, False, True])
    got = _where(jax.numpy.asarray(mask), new, old, {"table": 1, "bias": 0})
    for k in range(3):
        source = new if mask[k] else old
        np.testing.assert_array_equal(got["table"][:, k], source["table"][:, k])
        np.testing.assert_array_equal(got["bias"][k], source["bias"][k])


@pytest.mark.parametrize("name", ["bow", "transformer"])
def test_vmapped_evaluation_copies_no_table(data, name):
    """A vmapped group's evaluation, on the variables as `fit` hands them over, holds no
    table-sized array but the table itself: a bag model reads its [V, K, D] tables as groups,
    another model gets trials-first tables (its lookups would transpose [V, K, D] ones on
    every batch)."""
    from jaxnn.data import eval_batches
    from jaxnn.train.optim import HYPERPARAMETERS
    from jaxnn.train.step import zero_eval_metrics

    over = {"optim__sparse_embeddings": True}
    if name == "transformer":
        over |= {"model__name": "transformer", "model__num_heads": 2, "model__num_layers": 1}
    cfg = config(**over)
    group = TrialGroup(cfg, data, trials_per_program=0)
    init, _, evaluate = group._programs(None, False, True, False, None, 0)
    k = 3
    hyper = {n: np.full(k, float(cfg["optim"][n]), np.float32) for n in HYPERPARAMETERS}
    variables = group._for_eval(init(np.zeros(k, np.int32), hyper).variables())
    table = variables["params"][group.tables[0]]["embedding"]
    v, d = len(data.vocab), cfg.model.embed_dim
    assert table.shape == ((v, k, d) if name == "bow" else (k, v, d))
    zeros = zero_eval_metrics(group.num_classes)
    sums = jax.tree.map(lambda x: np.broadcast_to(x, (k, *x.shape)), zeros)
    batches = eval_batches(data.validation, batch_size=32, buckets=group.buckets)
    batch = batches.make_batch(batches.order(0)[0])
    hlo = evaluate.lower(variables, sums, batch).compile().as_text()
    sized = re.compile(rf"= f32\[({v},{k},{d}|{k},{v},{d})\]")
    copies = [line for line in hlo.splitlines() if sized.search(line) and "parameter(" not in line]
    assert not copies, copies[:3]
