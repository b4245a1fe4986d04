"""Your own small data set (a few thousand texts): a small bag of words that trains in seconds.

    python train.py --config=configs/small_text.py --config.data.corpus=path/to/mine.csv \
        --config.data.text_column=sentence --config.data.label_column=category

Sized for 500-10,000 texts: unigram + hashed bigram embeddings with a 2^14-row bigram table
(not the default's 2^21 rows, which a few thousand texts cannot train), D=32, a linear head,
dropout on the embeddings, up to 20 epochs with early stopping on validation macro F1. Every
word seen once in the training split is in the vocabulary. The corpus is BBC News (2,225 texts)
until you point data.corpus at your file (.csv, .tsv, .jsonl or a folder of <class>/*.txt).
"""

from jaxnn.train.config import base_config


def get_config():
    config = base_config()
    config.data.corpus = "bbc_news"
    config.data.max_len = 512
    config.data.min_freq = 1
    config.model.name = "bow"
    config.model.embed_dim = 32
    config.model.hidden_size = 0
    config.model.dropout = 0.2
    config.model.bigram_buckets = 2**14
    config.model.binary_features = True
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 1e-2
    config.optim.warmup_steps = 20
    config.train.batch_size = 32
    config.train.eval_batch_size = 256
    config.train.num_epochs = 20
    config.train.patience = 3
    config.train.log_every_steps = 20
    config.train.keep_checkpoints = 1
    return config
