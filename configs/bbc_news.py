"""BBC News (5 topics) with the bag-of-words model: unigrams + hashed bigrams, linear head."""

from jaxnn.train.config import base_config


def get_config():
    config = base_config()
    config.data.corpus = "bbc_news"
    config.data.max_len = 1024
    config.data.min_freq = 1
    config.model.name = "bow"
    config.model.embed_dim = 64
    config.model.hidden_size = 0
    config.model.dropout = 0.1
    config.model.bigram_buckets = 2**18
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 1e-2
    config.optim.warmup_steps = 20
    config.train.batch_size = 16
    config.train.eval_batch_size = 128
    config.train.num_epochs = 10
    config.train.patience = 3
    config.train.log_every_steps = 25
    config.train.keep_checkpoints = 1
    return config
