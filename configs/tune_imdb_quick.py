"""A small budget version of configs/tune_imdb.py for the comparison of search methods.

    python -m jaxnn.tune --config=configs/tune_imdb_quick.py --workdir=runs/tune_imdb_quick \
        --search=compare

configs/tune_bbc_quick.py's candidates (two or four per stage, about a dozen distinct trials) on
IMDB with configs/tune_imdb.py's data settings and 2 epochs per trial.
"""

from pathlib import Path

import ml_collections

from jaxnn.train.config import config_from_file


def get_config() -> ml_collections.ConfigDict:
    config = config_from_file(Path(__file__).with_name("tune_imdb.py"))
    quick = config_from_file(Path(__file__).with_name("tune_bbc_quick.py"))
    config.tune.candidates = quick.tune.candidates
    config.train.num_epochs = 2
    return config
