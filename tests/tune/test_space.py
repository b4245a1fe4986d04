"""jaxnn/tune/space.py: stages in tuning order, candidate checks, config paths."""

import math

import ml_collections
import pytest

from jaxnn.train.config import base_config
from jaxnn.tune.space import (
    HYPERPARAMETERS,
    TUNING_ORDER,
    apply_assignment,
    build_stages,
    check_config_paths,
    get_path,
    read_assignment,
)

EXPECTED_ORDER = [  # written out independently of jaxnn.tune.space
    "learning_rate",
    "dropout",
    "hidden_size",
    "batch_size",
    "weight_decay",
    "embed_dim",
    "optimizer",
    "activation",
]


def test_order_is_the_tuning_order():
    assert list(TUNING_ORDER) == EXPECTED_ORDER
    assert list(HYPERPARAMETERS) == EXPECTED_ORDER


def test_stages_sorted_into_tuning_order_whatever_the_input_order():
    stages = build_stages(
        {"activation": ["relu", "gelu"], "learning_rate": [1e-3, 1e-2], "embed_dim": [16, 32]}
    )
    assert [s.name for s in stages] == ["learning_rate", "embed_dim", "activation"]
    assert stages[0].candidates == ((1e-3,), (1e-2,))
    assert stages[0].shares_shapes and not stages[1].shares_shapes


def test_pair_is_one_stage_over_the_grid_at_its_first_members_place():
    stages = build_stages(
        {"weight_decay": [0.0, 1e-4], "dropout": [0.0, 0.5], "learning_rate": [1e-3]},
        pairs=[("weight_decay", "dropout")],
    )
    assert [s.name for s in stages] == ["learning_rate", "dropout+weight_decay"]
    assert set(stages[1].candidates) == {(0.0, 0.0), (0.0, 1e-4), (0.5, 0.0), (0.5, 1e-4)}
    assert stages[1].shares_shapes
    assert stages[1].assignments()[0] == {"dropout": 0.0, "weight_decay": 0.0}


@pytest.mark.parametrize(
    "candidates, pairs, match",
    [
        ({}, (), "at least one hyperparameter"),
        ({"learning_rate": []}, (), "empty"),
        ({"learn_rate": [1e-3]}, (), "unknown hyperparameter 'learn_rate'"),
        ({"learning_rate": [0.0]}, (), r"learning_rate=0.0 is out of range"),
        ({"learning_rate": [-1e-3]}, (), "out of range"),
        ({"learning_rate": [math.nan]}, (), "out of range"),
        ({"learning_rate": [math.inf]}, (), "out of range"),
        (
            {"dropout": [1.0]},
            (),
            r"dropout=1.0 is out of range: allowed a finite number in \[0, 1\)",
        ),
        ({"dropout": [-0.1]}, (), "out of range"),
        ({"hidden_size": [2.5]}, (), "an int"),
        ({"hidden_size": [-1]}, (), "out of range"),
        ({"batch_size": [0]}, (), "batch_size=0"),
        ({"batch_size": [True]}, (), "out of range"),
        ({"weight_decay": [-1e-4]}, (), "out of range"),
        ({"embed_dim": ["64"]}, (), "out of range"),
        ({"optimizer": ["rmsprop"]}, (), "allowed one of"),
        ({"activation": ["swish"]}, (), "allowed one of"),
        ({"learning_rate": [1e-3, 1e-3]}, (), "repeat"),
        ({"learning_rate": 1e-3}, (), "list or tuple"),
        ({"dropout": [0.1], "weight_decay": [0.0]}, [("dropout", "dropout")], "two different"),
        ({"dropout": [0.1]}, [("dropout", "weight_decay")], "has no candidates"),
        ({"dropout": [0.1]}, [("dropout", "nope")], "unknown hyperparameter 'nope'"),
        (
            {"dropout": [0.1], "weight_decay": [0.0], "learning_rate": [1e-3]},
            [("dropout", "weight_decay"), ("learning_rate", "dropout")],
            "two pairs",
        ),
    ],
)
def test_bad_candidates_raise_a_clear_error(candidates, pairs, match):
    with pytest.raises(ValueError, match=match):
        build_stages(candidates, pairs)


def test_apply_assignment_sets_each_path_and_copies():
    config = base_config()
    new = apply_assignment(config, {"learning_rate": 0.01, "batch_size": 8, "optimizer": "sgd"})
    assert new.optim.learning_rate == 0.01 and new.train.batch_size == 8
    assert new.optim.optimizer == "sgd"
    assert config.optim.learning_rate == base_config().optim.learning_rate  # original untouched
    assert read_assignment(new, ["batch_size", "optimizer"]) == {
        "batch_size": 8,
        "optimizer": "sgd",
    }
    with pytest.raises(ValueError, match=r"dropout=1\.5"):
        apply_assignment(config, {"dropout": 1.5})


def test_every_path_exists_in_the_training_schema():
    config = base_config()
    for h in HYPERPARAMETERS.values():
        get_path(config, h.path)  # raises KeyError if the schema moved
    check_config_paths(config, TUNING_ORDER)
    small = ml_collections.ConfigDict({"optim": {"learning_rate": 1e-3}})
    with pytest.raises(ValueError, match=r"'dropout' is tuned but .*model\.dropout"):
        check_config_paths(small, ["learning_rate", "dropout"])
