"""Loading ported weights: head replacement, grayscale stem, errors, cache and sources."""

from __future__ import annotations

import geffnet
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import nnx

import weights_reference as ref
from efficientnet_jax.models import create_model
from efficientnet_jax.weights import (ConversionError, SOURCES, WeightsUnavailableError,
                                      convert_checkpoint, create_pretrained, load_pretrained,
                                      load_weights, resolve_weights, save_weights)
from efficientnet_jax.weights import cache
from efficientnet_jax.weights.converter import convert_tensors
from efficientnet_jax.weights.known import KNOWN_WEIGHTS

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def b0_state_dict():
  torch.manual_seed(0)
  return ref.state_dict_numpy(geffnet.create_model("tf_efficientnet_b0"))


@pytest.fixture(scope="module")
def b0_weights(b0_state_dict):
  return convert_tensors(b0_state_dict, "b0", SOURCES["timm-tf"])


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
  monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
  monkeypatch.delenv(cache.OFFLINE_ENV, raising=False)
  return tmp_path / "cache"


def _params(model) -> dict[str, np.ndarray]:
  flat = nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))
  return {"/".join(map(str, path)): np.asarray(v[...]) for path, v in flat}


def test_new_num_classes_replaces_only_the_classifier(b0_weights):
  model = create_model("b0", num_classes=196, seed=3)
  fresh = _params(model)

  load_pretrained(model, b0_weights)

  loaded = _params(model)
  for key, value in loaded.items():
    if key.startswith("classifier/"):
      np.testing.assert_array_equal(value, fresh[key])
    else:
      np.testing.assert_array_equal(value, b0_weights.tensors[key], err_msg=key)
  assert loaded["classifier/kernel"].shape == (1280, 196)


def test_same_num_classes_loads_the_classifier(b0_weights):
  model = create_model("b0", num_classes=1000)
  load_pretrained(model, b0_weights)
  np.testing.assert_array_equal(_params(model)["classifier/kernel"], b0_weights.tensors["classifier/kernel"])


def test_grayscale_stem_is_the_rgb_stem_summed(b0_weights):
  gray, convention = create_pretrained(b0_weights, in_channels=1)
  rgb, _ = create_pretrained(b0_weights)
  images = ref.random_images(2, 32)[:, :1]

  np.testing.assert_allclose(_params(gray)["stem/conv/kernel"],
                             b0_weights.tensors["stem/conv/kernel"].sum(axis=2, keepdims=True))
  # A gray image through the summed stem = the same image replicated to RGB.
  np.testing.assert_allclose(ref.jax_logits(gray, images), ref.jax_logits(rgb, images.repeat(3, axis=1)),
                             atol=1e-4)
  assert convention.mean == pytest.approx((np.mean(b0_weights.convention.mean),))


def test_model_options_must_match_the_weights(b0_weights):
  model = create_model("b0", padding="symmetric")
  with pytest.raises(ValueError, match=r"model\.padding='same' \(is 'symmetric'\)"):
    load_pretrained(model, b0_weights)


def test_missing_tensor_is_named(b0_state_dict):
  tensors = {k: v for k, v in b0_state_dict.items() if k != "blocks.3.1.conv_dw.weight"}
  with pytest.raises(ConversionError, match=r"missing tensor 'blocks\.3\.1\.conv_dw\.weight' "
                                           r"\(480, 1, 3, 3\) for stages_3_1/dw_conv/kernel"):
    convert_tensors(tensors, "b0", SOURCES["timm-tf"])


def test_misshaped_tensor_names_both_shapes(b0_state_dict):
  tensors = dict(b0_state_dict, **{"blocks.1.0.conv_pwl.weight": np.zeros((24, 95, 1, 1), np.float32)})
  with pytest.raises(ConversionError, match=r"tensor 'blocks\.1\.0\.conv_pwl\.weight' has shape "
                                           r"\(24, 95, 1, 1\), expected \(24, 96, 1, 1\)"):
    convert_tensors(tensors, "b0", SOURCES["timm-tf"])


def test_unmapped_tensor_fails_and_counters_are_skipped(b0_state_dict, b0_weights):
  tensors = dict(b0_state_dict, **{"aux_head.weight": np.zeros((3,), np.float32)})
  with pytest.raises(ConversionError, match=r"unmapped tensor 'aux_head\.weight' \(3\)"):
    convert_tensors(tensors, "b0", SOURCES["timm-tf"])
  (reason,) = b0_weights.origin["skipped"]
  assert "num_batches_tracked" in b0_weights.origin["skipped"][reason]


def test_wrong_arch_suggests_the_right_one(b0_state_dict):
  with pytest.raises(ConversionError, match="matches arch b0"):
    convert_tensors(b0_state_dict, "b1", SOURCES["timm-tf"])


def test_safetensors_checkpoint_infers_arch_and_source(tmp_path):
  torch.manual_seed(0)
  model = geffnet.create_model("efficientnet_b0")
  path = tmp_path / "efficientnet_b0.safetensors"
  safetensors.torch.save_file(model.state_dict(), str(path))

  weights = convert_checkpoint(path)

  assert (weights.arch, weights.padding, weights.bn_epsilon) == ("b0", "symmetric", 1e-5)
  np.testing.assert_array_equal(weights.tensors["head/bn/var"], model.bn2.running_var.numpy())


def test_timm_layout_with_an_uninformative_name_asks_for_source(tmp_path, b0_state_dict):
  path = tmp_path / "pytorch_model.bin"
  torch.save({k: torch.from_numpy(v) for k, v in b0_state_dict.items()}, path)
  with pytest.raises(ValueError, match="--source=timm-tf or --source=timm"):
    convert_checkpoint(path)
  assert convert_checkpoint(path, source="timm-tf").padding == "same"


def test_save_and_load_round_trip(tmp_path, b0_weights):
  save_weights(b0_weights, tmp_path / "w")
  loaded = load_weights(tmp_path / "w")
  assert loaded.tensors.keys() == b0_weights.tensors.keys()
  assert all(np.array_equal(loaded.tensors[k], v) for k, v in b0_weights.tensors.items())
  assert (loaded.arch, loaded.padding, loaded.bn_epsilon, loaded.convention, loaded.class_names) == (
      b0_weights.arch, b0_weights.padding, b0_weights.bn_epsilon, b0_weights.convention, b0_weights.class_names)


def test_uncached_known_name_offline_gives_url_and_convert_command(cache_env, monkeypatch):
  monkeypatch.setenv(cache.OFFLINE_ENV, "1")
  known = KNOWN_WEIGHTS["tf_efficientnet_b0"]
  with pytest.raises(WeightsUnavailableError) as error:
    resolve_weights("tf_efficientnet_b0")
  message = str(error.value)
  assert known.url in message
  assert (f"python -m efficientnet_jax.convert --input={known.filename} --arch=b0 --source=timm-tf "
          f"--output={cache_env / 'tf_efficientnet_b0'}") in message


def test_failed_download_gives_the_same_instructions(cache_env, monkeypatch):
  def no_network(url, destination):
    raise OSError("Temporary failure in name resolution")
  monkeypatch.setattr(cache, "download", no_network)
  with pytest.raises(WeightsUnavailableError, match="Temporary failure in name resolution") as error:
    resolve_weights("efficientnet-b0")
  assert KNOWN_WEIGHTS["efficientnet-b0"].url in str(error.value)
  assert "--source=lukemelas" in str(error.value)


def test_downloaded_known_checkpoint_is_converted_once_into_the_cache(cache_env, monkeypatch, b0_state_dict):
  def fake_download(url, destination):  # The network, simulated: a file at the URL's name.
    torch.save({k: torch.from_numpy(v) for k, v in b0_state_dict.items()}, destination)
  monkeypatch.setattr(cache, "download", fake_download)
  monkeypatch.setattr(cache, "_check_hash", lambda path: None)

  first = resolve_weights("tf_efficientnet_b0")
  monkeypatch.setattr(cache, "download", None)  # A second resolve must not download.
  second = resolve_weights("tf_efficientnet_b0")

  assert (cache_env / "tf_efficientnet_b0" / "metadata.json").is_file()
  assert first.origin["source"] == second.origin["source"] == "timm-tf"
  np.testing.assert_array_equal(first.tensors["stem/conv/kernel"], second.tensors["stem/conv/kernel"])


def test_packaged_lite0_resolves_offline(cache_env, monkeypatch):
  monkeypatch.setenv(cache.OFFLINE_ENV, "1")
  weights = resolve_weights("efficientnet-lite0")
  assert weights.arch == "lite0" and weights.num_classes == 1000
  assert (cache_env / "efficientnet-lite0" / "params.npz").is_file()


def test_unknown_spec_lists_known_names(cache_env):
  with pytest.raises(FileNotFoundError, match="tf_efficientnet_b0"):
    resolve_weights("tf_efficientnet_b9")
