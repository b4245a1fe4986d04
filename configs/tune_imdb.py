"""Progressive tuning of the bow model on IMDB (study guide §12-§13).

    python -m jaxnn.tune --config=configs/tune_imdb.py --workdir=runs/tune_imdb

Same stages as configs/tune_bbc.py with a budget for a 20k-review training split: fewer epochs
per trial and shorter candidate lists.
"""

import ml_collections

from jaxnn.train.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.seed = 0
    config.data.corpus = "imdb"
    config.data.max_len = 256
    config.data.min_freq = 2
    config.data.max_vocab_size = 30000
    config.data.sort_pool = 0
    config.model.name = "bow"
    config.model.embed_dim = 64
    config.model.hidden_size = 0
    config.model.activation = "relu"
    config.model.dropout = 0.0
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 3e-3
    config.optim.weight_decay = 0.0
    config.optim.schedule = "cosine"
    config.train.batch_size = 64
    config.train.eval_batch_size = 512
    config.train.num_epochs = 3  # the per-trial budget
    config.train.patience = 0
    config.train.select_metric = "macro_f1"
    config.train.progress_bar = False

    config.tune = ml_collections.ConfigDict()
    config.tune.metric = "macro_f1"
    config.tune.engine = "vmapped"
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
    config.tune.pairs = []
    config.tune.storage = ""
    config.tune.study_name = "progressive"
    config.tune.group_size = 8
    config.tune.compare = ("random", "tpe")
    config.tune.compare_trials = 0
    config.tune.seed = 0
    return config
