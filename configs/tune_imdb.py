"""Progressive tuning of the bow model on IMDB.

    python -m jaxnn.tune --config=configs/tune_imdb.py --workdir=runs/tune_imdb

Same stages as configs/tune_bbc.py with a budget for a 20k-review training split: fewer epochs
per trial and shorter candidate lists.
"""

from pathlib import Path

import ml_collections

from jaxnn.train.config import config_from_file


def get_config() -> ml_collections.ConfigDict:
    config = config_from_file(Path(__file__).with_name("tune_bbc.py"))
    config.data.corpus = "imdb"
    config.data.max_len = 256
    config.data.max_vocab_size = 30000
    config.train.batch_size = 64
    config.train.eval_batch_size = 512
    config.train.num_epochs = 3  # the per-trial budget
    config.tune.candidates = ml_collections.ConfigDict(
        {
            "learning_rate": [1e-3, 3e-3, 1e-2, 3e-2],
            "dropout": [0.0, 0.25, 0.5],
            "hidden_size": [0, 64],
            "batch_size": [32, 64, 128],
            "weight_decay": [0.0, 1e-5, 1e-4],
            "embed_dim": [32, 64, 128],
            "optimizer": ["adam", "adamw"],
            "activation": ["relu", "gelu"],
        }
    )
    return config
