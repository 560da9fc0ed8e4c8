r"""Export a training run (or converted weights) to run without this code.

  python -m efficientnet_jax.export --workdir=runs/b0 [--checkpoint=best|latest|STEP] [--ema] \
      --format=weights|stablehlo|savedmodel|tflite|onnx --output=exports/b0_onnx
  python -m efficientnet_jax.export --weights=weights/lite0 --format=onnx --output=exports/lite0

--output is a new directory holding the artifact and export.json (what the graph takes and
returns, the preprocessing left to the caller, class names, where the weights came from):
  weights     params.npz + metadata.json: converted weights, which --weights (predict) and
              config.pretrained (a further fine-tune) accept
  stablehlo   model.jax_exported: jax.export serialized (jax.export.deserialize(...).call)
              for CPU, CUDA, ROCm and TPU
  savedmodel  a TensorFlow SavedModel (jax2tf), signature serving_default
  tflite      model.tflite, converted from that SavedModel
  onnx        model.onnx (jax2onnx), for onnxruntime
Every graph takes uint8 images [N, S, S, C] (RGB, NHWC, any batch size N) and returns float32
logits [N, classes]; the normalization is inside, the resize and crop are not (export.json
says how). The graph is built with XLA's depthwise convolution (portable; never the native
CPU kernel). A bfloat16 run exports in bfloat16 where the runtime has bfloat16 kernels
(stablehlo, savedmodel) and in float32 otherwise (--dtype overrides). Unless --noverify,
the artifact is run by its own runtime on probe images and compared with the JAX model.
"""

from __future__ import annotations

from efficientnet_jax import cli

if __name__ == "__main__":
  cli.quiet_start()  # Before JAX and TensorFlow are imported.

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402

import efficientnet_jax  # noqa: E402
from efficientnet_jax import predict, steps  # noqa: E402
from efficientnet_jax.models import EfficientNet  # noqa: E402
from efficientnet_jax.weights import InputConvention, PortedWeights, save_weights  # noqa: E402
from efficientnet_jax.errors import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
FORMATS = ("weights", "stablehlo", "savedmodel", "tflite", "onnx")
ARTIFACTS = {"weights": "params.npz", "stablehlo": "model.jax_exported",
             "savedmodel": "saved_model.pb", "tflite": "model.tflite", "onnx": "model.onnx"}
RUNTIMES = {"weights": "efficientnet_jax", "stablehlo": "jax.export", "savedmodel": "TensorFlow",
            "tflite": "the TFLite interpreter", "onnx": "onnxruntime"}
# Formats whose runtimes run a bfloat16 graph; TFLite's converter cannot legalize bfloat16
# ops and onnxruntime has no CPU bfloat16 MatMul, so those export float32 compute.
BFLOAT16_FORMATS = ("stablehlo", "savedmodel")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # Lowered for all: the graph has no custom calls.
EXPORT_FILE = "export.json"
FORMAT = "efficientnet_jax.export/1"
INPUT, OUTPUT = "images", "logits"


def with_dtype(model: EfficientNet, dtype: str) -> EfficientNet:
  """`model` computing in `dtype` (the same float32 parameters), in evaluation mode."""
  if model.options.dtype == dtype:
    return model
  converted = EfficientNet(dataclasses.replace(model.options, dtype=dtype))
  nnx.update(converted, nnx.state(model, (nnx.Param, nnx.BatchStat)))
  converted.eval()
  return converted


def compute_dtype(fmt: str, requested: str, model_dtype: str) -> str:
  """The dtype the exported graph computes in: 'auto' is the model's where `fmt` allows."""
  if requested == "auto":
    return model_dtype if fmt in BFLOAT16_FORMATS else "float32"
  if requested == "bfloat16" and fmt not in BFLOAT16_FORMATS:
    raise ConfigError(f"--dtype=bfloat16: {RUNTIMES[fmt]} has no bfloat16 kernels for this "
                     "graph; use --dtype=float32 (the default for this format).")
  return requested


def serving_fn(model: EfficientNet, convention: InputConvention) -> Callable[[jax.Array], jax.Array]:
  """uint8 images [N, S, S, C] -> float32 logits [N, classes], normalized inside; the
  weights are constants of the traced graph."""
  graphdef, state = nnx.split(model)
  mean, std = convention.mean, convention.std

  def serve(images: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(steps.normalize(images, mean, std))

  return serve


def input_shape(convention: InputConvention) -> tuple[int, int, int]:
  return (convention.image_size, convention.image_size, len(convention.mean))


def preprocessing(convention: InputConvention) -> dict[str, Any]:
  """What the caller does before the graph: decode, resize and crop to uint8 pixels."""
  size = convention.image_size
  resized = round(size / convention.crop_pct)
  crop = f", then centre-crop {size}x{size}" if resized != size else ""
  if convention.resize == "square":
    how = f"resize the whole image to {resized}x{resized} (aspect ratio not kept){crop}"
  else:
    how = f"resize the shorter side to {resized} (aspect ratio kept){crop}"
  return {"image_size": size, "resize": convention.resize, "crop_pct": convention.crop_pct,
          "interpolation": convention.interpolation,
          "channels": "RGB" if len(convention.mean) == 3 else "grayscale",
          "description": f"Decode to {'RGB' if len(convention.mean) == 3 else 'grayscale'} "
                         f"uint8; {how}; {convention.interpolation}, antialiased as PIL's "
                         "resize."}


def _write_weights(classifier: predict.Classifier, output: str) -> None:
  model = classifier.model
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  tensors = {"/".join(map(str, path)): np.asarray(jax.device_get(v.get_value()), np.float32)
             for path, v in nnx.to_flat_state(state)}
  save_weights(PortedWeights(
      arch=model.options.arch, padding=model.options.padding,
      bn_epsilon=model.options.bn_epsilon, convention=classifier.convention,
      class_names=classifier.class_names, tensors=tensors,
      origin={"source": "efficientnet_jax", **classifier.origin, "skipped": {}}), output)


def _write_stablehlo(serve: Callable, shape: tuple[int, ...], output: str) -> None:
  batch, = jax.export.symbolic_shape("batch")
  exported = jax.export.export(jax.jit(serve), platforms=PLATFORMS)(
      jax.ShapeDtypeStruct((batch, *shape), jnp.uint8))
  with open(os.path.join(output, ARTIFACTS["stablehlo"]), "wb") as f:
    f.write(exported.serialize())


def _save_savedmodel(serve: Callable, shape: tuple[int, ...], output: str,
                     platforms: tuple[str, ...] = PLATFORMS) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], "GPU")  # Converting needs no GPU; TF must not claim one.
  converted = jax2tf.convert(serve, polymorphic_shapes=[f"(batch, {', '.join(map(str, shape))})"],
                             with_gradient=False, native_serialization_platforms=platforms)
  module = tf.Module()
  module.serve = tf.function(
      lambda images: {OUTPUT: converted(images)}, autograph=False,
      input_signature=[tf.TensorSpec((None, *shape), tf.uint8, name=INPUT)])
  tf.saved_model.save(module, output, signatures={"serving_default": module.serve})


def _write_tflite(serve: Callable, shape: tuple[int, ...], output: str) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as saved:
    _save_savedmodel(serve, shape, saved, platforms=("cpu",))
    flatbuffer = tf.lite.TFLiteConverter.from_saved_model(saved).convert()
  with open(os.path.join(output, ARTIFACTS["tflite"]), "wb") as f:
    f.write(flatbuffer)


def _jax2onnx() -> Callable:
  """jax2onnx's to_onnx with only its jax (lax / jnp) plugins loaded, the only primitives the
  graph has: it imports all of its plugins on first use otherwise, and its Equinox ones
  build models at import (40 s of a 50 s export on 2 cores)."""
  from jax2onnx import to_onnx  # pylint: disable=g-import-not-at-top
  from jax2onnx.plugins import plugin_system  # pylint: disable=g-import-not-at-top

  if not getattr(plugin_system, "_already_imported_plugins", True):
    plugin_system._import_tree(  # pylint: disable=protected-access
        pathlib.Path(plugin_system.__file__).parent / "jax", "jax2onnx.plugins.jax")
    plugin_system._already_imported_plugins = True  # pylint: disable=protected-access
  return to_onnx


def _write_onnx(serve: Callable, shape: tuple[int, ...], output: str, metadata: dict) -> None:
  batch, = jax.export.symbolic_shape("batch")
  model = _jax2onnx()(serve, [jax.ShapeDtypeStruct((batch, *shape), jnp.uint8)],
                  model_name="efficientnet", opset=21, input_names=[INPUT],
                  output_names=[OUTPUT])
  entry = model.metadata_props.add()
  entry.key, entry.value = "efficientnet_jax", json.dumps(metadata)
  with open(os.path.join(output, ARTIFACTS["onnx"]), "wb") as f:
    f.write(model.SerializeToString())


def run_artifact(directory: str, images: np.ndarray) -> np.ndarray:
  """Logits of uint8 `images` [N, S, S, C] from an export directory, run by its own runtime."""
  with open(os.path.join(directory, EXPORT_FILE)) as f:
    fmt = json.load(f)["export_format"]
  path = os.path.join(directory, ARTIFACTS[fmt])
  if fmt == "weights":
    classifier = predict.load_classifier(weights=directory, depthwise="conv")
    return np.asarray(jax.jit(serving_fn(classifier.model, classifier.convention))(images))
  if fmt == "stablehlo":
    with open(path, "rb") as f:
      return np.asarray(jax.export.deserialize(bytearray(f.read())).call(images))
  if fmt == "savedmodel":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    return tf.saved_model.load(directory).signatures["serving_default"](
        **{INPUT: tf.constant(images)})[OUTPUT].numpy()
  if fmt == "tflite":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    with cli.native_stderr_silenced(), warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
      interpreter = tf.lite.Interpreter(model_path=path)
      index = interpreter.get_input_details()[0]["index"]
      interpreter.resize_tensor_input(index, images.shape)
      interpreter.allocate_tensors()
      interpreter.set_tensor(index, images)
      interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  import onnxruntime  # pylint: disable=g-import-not-at-top

  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  return session.run([OUTPUT], {INPUT: images})[0]


def probe_images(convention: InputConvention, n: int = 2) -> np.ndarray:
  """n deterministic uint8 test images: smooth colour gradients with noise."""
  size, channels = convention.image_size, len(convention.mean)
  rng = np.random.default_rng(0)
  ramp = np.linspace(0.0, 1.0, size)
  images = []
  for i in range(n):
    base = np.stack([np.add.outer(ramp * (c + i + 1), ramp[::-1] * (i + 2 - c)) % 1.0
                     for c in range(channels)], axis=-1)
    images.append(np.clip(base * 255 + rng.normal(0, 12, base.shape), 0, 255))
  return np.stack(images).astype(np.uint8)


def _check_output(output: str) -> None:
  if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
    raise ConfigError(f"--output={output} exists and is not an empty directory; choose a "
                          "new directory or delete it.")


def _size(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(directory)
             for name in names)


def export(classifier: predict.Classifier, fmt: str, output: str, *, dtype: str = "auto",
           verify: bool = True) -> dict[str, Any]:
  """Writes `classifier` in format `fmt` (FORMATS) into the new directory `output`; returns
  the metadata also written to <output>/export.json. Build the classifier with
  depthwise='conv' (portable XLA ops)."""
  if fmt not in FORMATS:
    raise ConfigError(f"--format={fmt!r}: unknown export format; use one of {', '.join(FORMATS)}.")
  _check_output(output)
  model_dtype = classifier.model.options.dtype
  # Weights are float32 parameters: whoever loads them picks the compute dtype.
  dtype = compute_dtype(fmt, dtype, model_dtype) if fmt != "weights" else None
  model = with_dtype(classifier.model, dtype or "float32")
  convention = classifier.convention
  shape = input_shape(convention)
  metadata = {
      "format": FORMAT, "export_format": fmt, "artifact": ARTIFACTS[fmt],
      "source": classifier.origin, "arch": model.options.arch,
      "num_classes": model.options.num_classes, "compute_dtype": dtype,
      "trained_dtype": model_dtype,
      "input": {"name": INPUT, "dtype": "uint8", "layout": "NHWC", "shape": [None, *shape],
                "preprocessing": preprocessing(convention),
                "normalization": {"inside_graph": fmt != "weights",
                                  "formula": "(pixels / 255 - mean) / std",
                                  "mean": list(convention.mean), "std": list(convention.std)}},
      "output": {"name": OUTPUT, "dtype": "float32", "shape": [None, model.options.num_classes],
                 "note": "logits; softmax gives class probabilities"},
      "class_names": list(classifier.class_names),
      "versions": {"efficientnet_jax": efficientnet_jax.__version__, "jax": jax.__version__},
  }
  parent = os.path.dirname(os.path.abspath(output))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
  try:
    start = time.perf_counter()
    serve = serving_fn(model, convention)
    if fmt == "weights":
      _write_weights(dataclasses.replace(classifier, model=model), staging)
    elif fmt == "stablehlo":
      _write_stablehlo(serve, shape, staging)
    elif fmt == "savedmodel":
      _save_savedmodel(serve, shape, staging)
    elif fmt == "tflite":
      _write_tflite(serve, shape, staging)
    else:
      _write_onnx(serve, shape, staging, metadata)
    metadata["export_seconds"] = round(time.perf_counter() - start, 2)
    metadata["size_bytes"] = _size(staging)
    _write_json(os.path.join(staging, EXPORT_FILE), metadata)
    if verify:
      images = probe_images(convention)
      expected = np.asarray(jax.jit(serve)(images))
      diff = float(np.abs(run_artifact(staging, images) - expected).max())
      metadata["verification"] = {
          "runtime": RUNTIMES[fmt], "images": len(images), "max_abs_logit_diff": diff,
          "against": f"the JAX model computing in {dtype or 'float32'}"}
      _write_json(os.path.join(staging, EXPORT_FILE), metadata)
    if os.path.isdir(output):
      os.rmdir(output)  # Empty (checked above).
    os.replace(staging, output)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return metadata


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=1)


def describe(metadata: dict[str, Any], output: str) -> str:
  """The console lines of an export."""
  fmt = metadata["export_format"]
  dtype, trained = metadata["compute_dtype"], metadata["trained_dtype"]
  lines = [f"Exported {fmt} to {output} ({metadata['size_bytes'] / 1e6:.1f} MB, "
           f"{metadata['export_seconds']:.1f} s): {metadata['arch']}, "
           f"{metadata['num_classes']} classes, "
           + ("float32 parameters" if dtype is None else f"{dtype} compute"
              + (f" (trained in {trained})" if trained != dtype else ""))]
  if fmt != "weights":
    shape = metadata["input"]["shape"]
    lines.append(f"  input '{INPUT}': uint8 [batch, {shape[1]}, {shape[2]}, {shape[3]}] NHWC, "
                 f"normalized inside; output '{OUTPUT}': float32 [batch, {metadata['num_classes']}]")
  lines.append(f"  preprocessing: {metadata['input']['preprocessing']['description']}")
  if "verification" in metadata:
    v = metadata["verification"]
    lines.append(f"  verified with {v['runtime']}: logits within {v['max_abs_logit_diff']:.2g} "
                 f"of {v['against']} on {v['images']} probe images")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ConfigError(f"Unexpected arguments {argv[1:]}; all options are --flags.")
  if FLAGS.format not in FORMATS:
    raise ConfigError(f"--format={FLAGS.format!r}: unknown export format; use one of "
                     f"{', '.join(FORMATS)}.")
  if not FLAGS.output:
    raise ConfigError("--output is required: a new directory for the export.")
  _check_output(FLAGS.output)
  classifier = predict.load_classifier(workdir=FLAGS.workdir, weights=FLAGS.weights,
                                       checkpoint=FLAGS.checkpoint, ema=FLAGS.ema,
                                       depthwise="conv")
  metadata = export(classifier, FLAGS.format, FLAGS.output, dtype=FLAGS.dtype,
                    verify=FLAGS.verify)
  print(describe(metadata, FLAGS.output))


def _define_flags() -> None:
  cli.define_checkpoint_flags()
  flags.DEFINE_string("weights", None, "Instead of --workdir: converted weights, a PyTorch "
                      "checkpoint or a known name (as predict --weights).")
  flags.DEFINE_string("format", None, f"One of {', '.join(FORMATS)}.")
  flags.DEFINE_string("output", None, "A new directory for the export.")
  flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"], "Compute dtype of the "
                    "graph; auto: the run's where the runtime supports it, else float32.")
  flags.DEFINE_boolean("verify", True, "Run the artifact with its own runtime on probe images "
                       "and compare its logits with the JAX model's.")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
