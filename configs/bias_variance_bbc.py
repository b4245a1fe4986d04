"""Bias-variance sweep of the bow model on BBC News.

    python -m jaxnn.analysis.bias_variance --config=configs/bias_variance_bbc.py \
        --workdir=runs/bias_variance_bbc

K = analysis.num_models bootstrap models per capacity, trained together (vmapped); capacity is
the head's hidden_size (0 = linear head), no dropout and no weight decay (unregularized), and
every epoch up to train.num_epochs is measured.
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
    config.model.hidden_size = 0  # swept below
    config.model.activation = "relu"
    config.model.dropout = 0.0
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 1e-2
    config.optim.weight_decay = 0.0
    config.optim.schedule = "constant"
    config.train.batch_size = 32
    config.train.num_epochs = 12
    config.train.progress_bar = False

    config.analysis = ml_collections.ConfigDict()
    config.analysis.capacity_param = "hidden_size"  # or "embed_dim"
    config.analysis.capacities = [0, 4, 16, 64, 256]
    config.analysis.num_models = 8
    config.analysis.seed = 0
    return config
