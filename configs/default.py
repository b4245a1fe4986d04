"""The default run (`python train.py`): IMDB, a fastText-style bag of words, the best recipe.

Unigram + hashed bigram embeddings (2^21 rows, D=32) -> masked mean -> linear head, trained with
lazy sparse Adam on the tables, so a step costs O(rows touched). Every word of the training split
is in the vocabulary (min_freq 1) and each text's bag is binarized (each distinct unigram and
bigram counted once, the "binarized" features of NBSVM, Wang & Manning 2012); up to 4 epochs
with early stopping on validation macro F1 (patience 2). The recipe was chosen on the validation
split; its test accuracy and wall time are in benchmarks/RESULTS.md.
"""

from jaxnn.train.config import base_config


def get_config():
    config = base_config()
    config.data.corpus = "imdb"
    config.data.max_len = 1024
    config.data.min_freq = 1
    config.model.name = "bow"
    config.model.embed_dim = 32
    config.model.hidden_size = 0
    config.model.dropout = 0.0
    config.model.bigram_buckets = 2**21
    config.model.binary_features = True
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 5e-3
    config.optim.warmup_steps = 100
    config.optim.sparse_embeddings = True
    config.train.batch_size = 32
    config.train.eval_batch_size = 256
    config.train.num_epochs = 4
    config.train.patience = 2
    config.train.log_every_steps = 100
    config.train.keep_checkpoints = 1
    return config
