"""Top-k ImageNet (or the checkpoint's own) classes for images, by the weights' convention.

Usage:
  python -m efficientnet_jax.predict --weights=weights/efficientnet-lite0 cat.jpg dog.jpg

--weights takes a converted weights directory, a raw PyTorch checkpoint or a known name
(e.g. tf_efficientnet_b0; see efficientnet_jax.weights.KNOWN_WEIGHTS).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from PIL import Image

from efficientnet_jax.weights import InputConvention, WeightsError, create_pretrained, resolve_weights

FLAGS = flags.FLAGS
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def prepare_image(image: Image.Image, convention: InputConvention) -> np.ndarray:
  """Eval preprocessing: resize the short side to image_size / crop_pct, centre-crop
  image_size, normalize. Returns float32 [H, W, C] (C = len(convention.mean))."""
  image = image.convert("RGB" if len(convention.mean) == 3 else "L")
  size = convention.image_size
  short = int(size / convention.crop_pct)
  w, h = image.size
  scale = short / min(w, h)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  image = image.resize((new_w, new_h), _RESAMPLE[convention.interpolation])
  left, top = (new_w - size) // 2, (new_h - size) // 2
  pixels = np.asarray(image.crop((left, top, left + size, top + size)))
  return convention.normalize(pixels.reshape(size, size, -1))


def predict(weights_spec: str, paths: list[str], top_k: int = 5) -> list[list[tuple[int, float, str]]]:
  """For each image, the top_k (class id, probability, class name), most likely first."""
  weights = resolve_weights(weights_spec)
  model, convention = create_pretrained(weights)
  model.eval()
  batch = np.stack([prepare_image(Image.open(p), convention) for p in paths])
  probs = np.asarray(jax.nn.softmax(nnx.jit(lambda m, x: m(x))(model, batch)))
  results = []
  for row in probs:
    order = np.argsort(-row)[:top_k]
    results.append([(int(i), float(row[i]),
                     weights.class_names[i] if weights.class_names else f"class {i}") for i in order])
  return results


def main(argv: list[str]) -> None:
  paths = argv[1:]
  if not paths:
    raise app.UsageError("Give at least one image path.")
  try:
    results = predict(FLAGS.weights, paths, FLAGS.top_k)
  except (WeightsError, FileNotFoundError) as e:
    raise SystemExit(f"Error: {e}") from None
  for path, top in zip(paths, results):
    print(path)
    for index, prob, name in top:
      print(f"  {prob:6.3f}  {index:4d}  {name}")


def _define_flags() -> None:
  # Defined only when run as a program (see convert.py).
  flags.DEFINE_string("weights", None, "Converted weights directory, checkpoint or known name.", required=True)
  flags.DEFINE_integer("top_k", 5, "How many classes to print per image.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
