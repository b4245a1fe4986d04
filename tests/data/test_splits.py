"""Tests for jaxnn/data/splits.py: the stratified split and the Split container (the cleaning
and labelling steps are tested through load_corpus in test_corpora.py and test_readers.py)."""

import numpy as np
import pytest

from jaxnn.data.splits import Split, stratified_split

# --- stratified splits ---------------------------------------------------------------------------


def test_stratified_split_sizes_partition_and_determinism():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 7 + [3] * 1)
    parts = stratified_split(labels, test_fraction=0.1, validation_fraction=1 / 9, seed=3)
    joined = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(joined), np.arange(labels.size))  # a partition
    for name, expected in [("test", [5, 3, 1, 0]), ("validation", [5, 3, 1, 0])]:
        assert np.bincount(labels[parts[name]], minlength=4).tolist() == expected
    assert np.bincount(labels[parts["train"]], minlength=4).tolist() == [40, 24, 5, 1]
    again = stratified_split(labels, test_fraction=0.1, validation_fraction=1 / 9, seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = stratified_split(labels, test_fraction=0.1, validation_fraction=1 / 9, seed=4)
    assert not np.array_equal(parts["test"], other["test"])


def test_stratified_split_keeps_a_training_example_of_every_class():
    labels = np.array([0, 0, 1, 2, 2, 2])
    parts = stratified_split(labels, test_fraction=0.5, validation_fraction=0.9, seed=0)
    assert set(labels[parts["train"]]) == {0, 1, 2}


@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.5"])
def test_stratified_split_rejects_bad_fractions(bad):
    with pytest.raises(ValueError, match="test_fraction must be a number in"):
        stratified_split(np.zeros(4), test_fraction=bad, validation_fraction=0.1, seed=0)


def test_split_dataclass_checks_label_shape():
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        Split(["a", "b"], np.array([0, 1, 1]))
