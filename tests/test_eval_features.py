"""The extractor registry and fixed-batch runner, with a toy network (no weights, no torch)."""
import jax.numpy as jnp
import numpy as np
import pytest

from var_jax.eval import features


def _toy_apply(scale, images_BHWC):
  """Per-image channel means times `scale`, and logits that identify the image."""
  x = images_BHWC.astype(jnp.float32)
  feats_BD = jnp.mean(x, axis=(1, 2)) * scale
  return feats_BD, jnp.stack([feats_BD[:, 0], -feats_BD[:, 1]], axis=1)


def test_batches_are_padded_and_trimmed_to_the_input_order():
  images = np.random.default_rng(0).integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
  want = images.astype(np.float64).mean(axis=(1, 2)) * 2.0
  for batch_size in (1, 3, 7, 16):
    extractor = features.JitExtractor(_toy_apply, 2.0, dim=3, num_classes=2, batch_size=batch_size)
    feats, logits = extractor(images)
    np.testing.assert_allclose(feats, want, rtol=1e-6)
    np.testing.assert_allclose(logits, np.stack([want[:, 0], -want[:, 1]], axis=1), rtol=1e-6)


def test_an_extractor_without_a_classifier_returns_none():
  extractor = features.JitExtractor(lambda v, x: (_toy_apply(v, x)[0], None), 1.0, dim=3,
                                    num_classes=None, batch_size=4)
  feats, logits = extractor(np.zeros((5, 2, 2, 3), np.uint8))
  assert feats.shape == (5, 3) and logits is None


def test_extractor_rejects_float_or_grey_images():
  extractor = features.JitExtractor(_toy_apply, 1.0, dim=3, num_classes=2)
  with pytest.raises(ValueError):
    extractor(np.zeros((2, 4, 4, 3), np.float32))
  with pytest.raises(ValueError):
    extractor(np.zeros((2, 4, 4), np.uint8))


def test_registry_takes_a_new_extractor_in_one_entry(monkeypatch):
  made = {}

  def factory(arg, batch_size):
    made.update(arg=arg, batch_size=batch_size)
    return features.JitExtractor(_toy_apply, 1.0, dim=3, num_classes=2, batch_size=batch_size)

  monkeypatch.setitem(features.EXTRACTORS, 'toy', factory)
  extractor = features.get_extractor('toy:/some/path:with-colon', batch_size=8)
  assert made == {'arg': '/some/path:with-colon', 'batch_size': 8}
  assert extractor.dim == 3


def test_get_extractor_rejects_unknown_names_and_a_missing_path():
  with pytest.raises(ValueError):
    features.get_extractor('clip:/x.pth')
  with pytest.raises(ValueError):
    features.get_extractor('inception')
  with pytest.raises(FileNotFoundError):
    features.get_extractor('inception:/nonexistent/weights-inception-2015-12-05-6726825d.pth')
