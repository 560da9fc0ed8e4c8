"""Knowledge distillation (config.distill): the loss's minimum, and a B0 student distilled
from a trained demo teacher end to end."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientnet_jax import distill, parallel, steps, train
from efficientnet_jax.models import ModelOptions
from finished_run import finished_run
from test_train_e2e import demo_config
from test_train_steps import MEAN, SIZE, STD, Harness, _optim_config, frozen_bn_models, tiny_data


def test_kd_loss_is_the_scaled_kl_divergence():
  student, teacher, t = np.array([[1.0, 0.0, -1.0]]), np.array([[0.5, 2.0, 0.0]]), 2.0
  p = np.exp(teacher / t) / np.exp(teacher / t).sum()
  q = np.exp(student / t) / np.exp(student / t).sum()
  expected = t**2 * np.sum(p * np.log(p / q))
  np.testing.assert_allclose(distill.kd_loss(jnp.asarray(student), jnp.asarray(teacher), t),
                             [expected], rtol=1e-5)
  assert float(distill.kd_loss(jnp.asarray(teacher), jnp.asarray(teacher), t)[0]) == pytest.approx(0, abs=1e-7)


def test_alpha_one_and_the_students_own_weights_start_at_the_minimum():
  """The KL term's minimum is 0 (not the teacher's entropy): with alpha = 1 and a teacher
  equal to the student (frozen BatchNorm, no dropout: the same function in training mode),
  the first step's loss is 0; another teacher gives a positive loss."""
  data = tiny_data()
  student, = frozen_bn_models(data, 1)
  teacher = distill.Teacher(distill.with_compute(student, "float32", "conv"), MEAN, STD,
                            image_size=SIZE, alpha=1.0, temperature=2.0)
  h = Harness(student, _optim_config(), teacher=teacher)
  assert float(h.train(data)["loss"]) == pytest.approx(0.0, abs=1e-6)
  other, = frozen_bn_models(data, 1, seed=1)
  _, *other_vars = steps.split_model(other)
  h.steps = dataclasses.replace(h.steps, teacher=parallel.replicate(tuple(other_vars), h.mesh))
  assert float(h.train(data)["loss"]) > 1e-2


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  """The session's finished demo run (tests/finished_run.py), its data shared by the student."""
  workdir, _ = finished_run(tmp_path_factory)
  os.environ["EFFICIENTNET_JAX_DEMO_DATA"] = os.path.join(os.path.dirname(workdir), "data")
  yield workdir
  del os.environ["EFFICIENTNET_JAX_DEMO_DATA"]


def test_b0_student_distilled_from_a_trained_demo_teacher(teacher_run, tmp_path):
  workdir = str(tmp_path / "student")
  # The teacher (trained at 32 px) sees the student's 32 px batch resized to 40 on the device.
  config = demo_config(**{"train.num_epochs": 1, "distill.teacher": teacher_run,
                          "distill.alpha": 0.7, "distill.temperature": 2.0,
                          "distill.image_size": 40})
  results = train.train_and_evaluate(config, workdir)
  assert results["test"]["num_examples"] == 40 and np.isfinite(results["test"]["loss"])
  assert json.load(open(os.path.join(workdir, "results.json")))["steps"] == results["steps"] > 0
  teacher = distill.load_teacher(config.distill, ModelOptions(**config.model.to_dict()))
  assert teacher.image_size == 40 and teacher.alpha == 0.7
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(steps.split_model(teacher.model)[1]))


def test_teacher_errors_name_the_field(teacher_run):
  config = demo_config(**{"distill.teacher": teacher_run})
  with pytest.raises(ValueError, match=r"distill.teacher=.* predicts 4 classes, the student "
                     r"\(model.num_classes\) 5"):
    distill.load_teacher(config.distill, ModelOptions(num_classes=5))
  config.distill.teacher = teacher_run + "_typo"
  with pytest.raises(FileNotFoundError, match=r"distill.teacher=.*_typo' is neither a training workdir"):
    distill.load_teacher(config.distill, ModelOptions(num_classes=4))
  config.distill.teacher = teacher_run
  config.distill.alpha = 1.5
  with pytest.raises(ValueError, match="distill.alpha=1.5"):
    distill.load_teacher(config.distill, ModelOptions(num_classes=4))
