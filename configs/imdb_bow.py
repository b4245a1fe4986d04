"""IMDB with the fastText-style bag-of-words model: unigram + hashed bigram embeddings (2^20 rows),
mean pooling, a linear head, lazy sparse Adam on the tables (jaxnn.train.sparse).

configs/default.py trained longer (5 epochs, early stopping with patience 2).
"""

from pathlib import Path

from jaxnn.train.config import config_from_file


def get_config():
    config = config_from_file(Path(__file__).with_name("default.py"))
    config.train.num_epochs = 5
    config.train.patience = 2
    return config
