"""IMDB, the best bag-of-words configuration found (chosen on validation accuracy, tested once).

configs/default.py plus: every word in the vocabulary (min_freq 1), a 2^21-row hashed bigram
table, and binarized bags (each distinct unigram and bigram of a review counted once, the
"binarized" features of NBSVM, Wang & Manning 2012), 4 epochs with early stopping (patience 2).
Candidates compared on the validation split (README, "Results"): + hashed trigrams (2^21 rows),
binarized + trigrams, longer inputs, wider embeddings, other learning rates and dropouts.
"""

from pathlib import Path

from jaxnn.train.config import config_from_file


def get_config():
    config = config_from_file(Path(__file__).with_name("default.py"))
    config.data.min_freq = 1
    config.model.bigram_buckets = 2**21
    config.model.binary_features = True
    config.train.num_epochs = 4
    config.train.patience = 2
    return config
