"""Progressive tuning of the bow model on BBC News.

    python -m jaxnn.tune --config=configs/tune_bbc.py --workdir=runs/tune_bbc
    python -m jaxnn.tune --config=configs/tune_bbc.py --workdir=runs/tune_bbc --search=compare

The training part is jaxnn.train's schema (base_config); ``tune`` holds the candidates of each
stage (tried in jaxnn.tune.space.TUNING_ORDER, whatever the order here), the selection metric (on
validation only) and where the Optuna study lives.
"""

import ml_collections

from jaxnn.train.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.seed = 0
    config.data.corpus = "bbc_news"
    config.data.max_len = 512
    config.data.min_freq = 2
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
    config.train.batch_size = 32
    config.train.num_epochs = 8  # the per-trial budget
    config.train.patience = 0
    config.train.select_metric = "macro_f1"
    config.train.progress_bar = False

    config.tune = ml_collections.ConfigDict()
    config.tune.metric = "macro_f1"  # or "accuracy"; always on the validation split
    config.tune.engine = "vmapped"  # same-shape trials of a stage train together
    config.tune.candidates = ml_collections.ConfigDict(
        {
            "learning_rate": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
            "dropout": [0.0, 0.2, 0.4, 0.6],
            "hidden_size": [0, 64, 256],
            "batch_size": [16, 32, 64],
            "weight_decay": [0.0, 1e-5, 1e-4, 1e-3],
            "embed_dim": [32, 64, 128],
            "optimizer": ["adam", "adamw", "sgd"],
            "activation": ["relu", "gelu", "tanh", "sigmoid"],
        }
    )
    config.tune.pairs = []  # e.g. [("dropout", "weight_decay")] to tune two together
    config.tune.storage = ""  # "" = sqlite:///<workdir>/tune.db; or any SQLAlchemy URL
    config.tune.study_name = "progressive"
    config.tune.group_size = 8
    config.tune.compare = ("random", "tpe")
    config.tune.compare_trials = 0  # 0 = as many trials as the progressive search ran
    config.tune.seed = 0
    return config
