"""Bias-variance sweep of the bow model on IMDB over embed_dim.

    python -m jaxnn.analysis.bias_variance --config=configs/bias_variance_imdb.py \
        --workdir=runs/bias_variance_imdb
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
    config.model.embed_dim = 64  # swept below
    config.model.hidden_size = 64
    config.model.dropout = 0.0
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 3e-3
    config.optim.weight_decay = 0.0
    config.optim.schedule = "constant"
    config.train.batch_size = 64
    config.train.eval_batch_size = 512
    config.train.num_epochs = 6
    config.train.progress_bar = False

    config.analysis = ml_collections.ConfigDict()
    config.analysis.capacity_param = "embed_dim"
    config.analysis.capacities = [1, 4, 16, 64, 128]
    config.analysis.num_models = 8
    config.analysis.seed = 0
    return config
