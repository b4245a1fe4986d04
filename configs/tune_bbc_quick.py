"""A small budget version of configs/tune_bbc.py (the comparison run of the report).

    python -m jaxnn.tune --config=configs/tune_bbc_quick.py --workdir=runs/tune_bbc_quick \
        --search=compare

Two or four candidates per stage and 3 epochs per trial: about a dozen distinct trials.
"""

import importlib.util
from pathlib import Path

import ml_collections

_spec = importlib.util.spec_from_file_location("tune_bbc", Path(__file__).with_name("tune_bbc.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config() -> ml_collections.ConfigDict:
    config = _base.get_config()
    config.train.num_epochs = 3
    config.tune.candidates = ml_collections.ConfigDict(
        {
            "learning_rate": [3e-3, 1e-2, 3e-2, 1e-1],
            "dropout": [0.0, 0.3],
            "hidden_size": [0, 64],
            "batch_size": [32, 64],
            "weight_decay": [0.0, 1e-4],
            "embed_dim": [32, 64],
            "optimizer": ["adam", "sgd"],
            "activation": ["relu", "tanh"],
        }
    )
    return config
