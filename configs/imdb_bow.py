"""IMDB with the fastText-style bag-of-words model: unigram + hashed bigram embeddings (2^20 rows),
mean pooling, a linear head, lazy sparse Adam on the tables (jaxnn.train.sparse)."""

from jaxnn.train.config import base_config


def get_config():
    config = base_config()
    config.data.corpus = "imdb"
    config.data.max_len = 1024
    config.data.min_freq = 2
    config.model.name = "bow"
    config.model.embed_dim = 32
    config.model.hidden_size = 0
    config.model.dropout = 0.0
    config.model.bigram_buckets = 2**20
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 5e-3
    config.optim.warmup_steps = 100
    config.optim.sparse_embeddings = True
    config.train.batch_size = 32
    config.train.eval_batch_size = 256
    config.train.num_epochs = 5
    config.train.patience = 2
    config.train.log_every_steps = 100
    config.train.keep_checkpoints = 1
    return config
