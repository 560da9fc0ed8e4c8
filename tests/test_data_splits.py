"""Stratified validation hold-out: disjoint, complete, stratified, seeded."""

import logging

import ml_collections
import numpy as np
import pytest

from efficientnet_jax.data import splits
from efficientnet_jax.data.errors import DataError

LABELS = np.repeat(np.arange(5), [40, 41, 2, 1, 136])


def test_holdout_is_disjoint_complete_and_stratified():
  kept, held = splits.stratified_holdout(LABELS, 0.1, seed=0)
  assert not set(kept) & set(held)
  assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(LABELS)))
  assert np.bincount(LABELS[held], minlength=5).tolist() == [4, 4, 1, 0, 14]
  assert np.all(np.diff(kept) > 0) and np.all(np.diff(held) > 0)


def test_holdout_depends_only_on_seed():
  a = splits.stratified_holdout(LABELS, 0.1, seed=3)[1]
  b = splits.stratified_holdout(LABELS, 0.1, seed=3)[1]
  c = splits.stratified_holdout(LABELS, 0.1, seed=4)[1]
  assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_zero_fraction_holds_nothing_and_bad_fraction_names_the_field():
  kept, held = splits.stratified_holdout(LABELS, 0.0, seed=0)
  assert len(held) == 0 and len(kept) == len(LABELS)
  with pytest.raises(DataError, match="config.data.val_fraction"):
    splits.stratified_holdout(LABELS, 1.0, seed=0)


def _config(val_split):
  return ml_collections.ConfigDict({"val_split": val_split, "val_fraction": 0.1, "split_seed": 0})


@pytest.fixture
def labels(monkeypatch):
  sizes = {"train": 30, "test": 12}
  monkeypatch.setattr(splits.records, "split_labels",
                      lambda _, split: np.arange(sizes[split]) % 3)


def test_split_indices_hold_val_out_of_train(labels):
  del labels
  train = splits.split_indices(_config("train"), "d", "train")
  val = splits.split_indices(_config("train"), "d", "val")
  test = splits.split_indices(_config("train"), "d", "test")
  assert train[0] == val[0] == "train" and test[0] == "test"
  assert len(train[1]) == 27 and len(val[1]) == 3 and not set(train[1]) & set(val[1])
  assert np.array_equal(test[1], np.arange(12))


def test_val_split_test_reproduces_the_original_protocol_with_a_warning(labels, caplog):
  del labels
  with caplog.at_level(logging.WARNING):
    val = splits.split_indices(_config("test"), "d", "val")
  assert val[0] == "test" and len(val[1]) == 12
  assert "optimistic" in caplog.text
  assert len(splits.split_indices(_config("test"), "d", "train")[1]) == 30
  with pytest.raises(DataError, match="config.data.val_split"):
    splits.split_indices(_config("holdout"), "d", "val")
