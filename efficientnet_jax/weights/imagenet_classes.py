"""Class names of the ImageNet-1k head (WordNet lemmas, in the standard class order)."""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def imagenet1k_class_names() -> tuple[str, ...]:
  """The 1000 ImageNet-1k class names, index = class id (e.g. 281 'tabby, tabby cat')."""
  text = resources.files(__package__).joinpath("imagenet1k_classes.txt").read_text()
  return tuple(text.splitlines())


def default_class_names(num_classes: int) -> tuple[str, ...]:
  """ImageNet-1k names for a 1000-class head; no names (empty) for any other head."""
  return imagenet1k_class_names() if num_classes == 1000 else ()
