"""A run of seconds, for tests: BBC News, short texts, a small bag-of-words model, 2 epochs."""

from jaxnn.train.config import base_config


def get_config():
    config = base_config()
    config.data.corpus = "bbc_news"
    config.data.max_len = 64
    config.data.min_freq = 2
    config.model.name = "bow"
    config.model.embed_dim = 16
    config.model.hidden_size = 16
    config.model.dropout = 0.1
    config.model.bigram_buckets = 4096
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 3e-2
    config.optim.warmup_steps = 5
    config.train.batch_size = 32
    config.train.eval_batch_size = 128
    config.train.num_epochs = 2
    config.train.log_every_steps = 10
    config.train.progress_bar = False
    return config
