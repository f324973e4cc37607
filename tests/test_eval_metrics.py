"""FID, Inception Score, precision/recall and reference files against closed forms and naive loops."""
import numpy as np
import pytest
from scipy.stats import ortho_group

from var_jax.eval import metrics


def _closed_form_fd(mu1, d1, mu2, d2):
  """FD of two Gaussians whose covariances share eigenvectors, eigenvalues d1 and d2."""
  return float(np.sum((mu1 - mu2) ** 2) + np.sum(d1 + d2 - 2.0 * np.sqrt(d1 * d2)))


def _eigh_fd(s1, mu1, s2, mu2):
  """FD with tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2), via symmetric eigendecompositions."""
  w, v = np.linalg.eigh(s1)
  root = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
  inner = np.linalg.eigvalsh(root @ s2 @ root)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
               - 2.0 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
  rng = np.random.default_rng(0)
  d1, d2 = rng.uniform(0.1, 3.0, 64), rng.uniform(0.1, 3.0, 64)
  mu1, mu2 = rng.normal(size=64), rng.normal(size=64)
  got = metrics.frechet_distance(metrics.GaussianStats(mu1, np.diag(d1)),
                                 metrics.GaussianStats(mu2, np.diag(d2)))
  np.testing.assert_allclose(got, _closed_form_fd(mu1, d1, mu2, d2), rtol=1e-10)


def test_frechet_distance_of_rotated_gaussians_is_the_closed_form():
  rng = np.random.default_rng(1)
  q = ortho_group.rvs(48, random_state=2)
  d1, d2 = rng.uniform(0.1, 3.0, 48), rng.uniform(0.1, 3.0, 48)
  mu1, mu2 = rng.normal(size=48), rng.normal(size=48)
  got = metrics.frechet_distance(metrics.GaussianStats(mu1, q @ np.diag(d1) @ q.T),
                                 metrics.GaussianStats(mu2, q @ np.diag(d2) @ q.T))
  np.testing.assert_allclose(got, _closed_form_fd(mu1, d1, mu2, d2), rtol=1e-9)


def test_frechet_distance_of_feature_sets_matches_the_eigh_reference():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32))
  b = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32)) + 0.5
  want = _eigh_fd(np.cov(a, rowvar=False), a.mean(0), np.cov(b, rowvar=False), b.mean(0))
  np.testing.assert_allclose(metrics.frechet_distance(a, b), want, rtol=1e-9)
  # A feature set against stored statistics gives the same number.
  np.testing.assert_allclose(metrics.frechet_distance(a, metrics.feature_stats(b)), want, rtol=1e-9)


def test_frechet_distance_of_identical_rank_deficient_sets_is_zero():
  # 10 samples in 64 dimensions: both covariances are singular.
  # sqrtm of a singular product loses digits; relative to tr(S_a + S_b) it stays tiny.
  x = np.random.default_rng(4).normal(size=(10, 64))
  scale = 2.0 * np.trace(np.cov(x, rowvar=False))
  assert abs(metrics.frechet_distance(x, x)) < 1e-6 * scale


def test_frechet_distance_rejects_a_non_psd_covariance_and_mismatched_dims():
  good = metrics.GaussianStats(np.zeros(2), np.eye(2))
  with pytest.raises(ValueError):
    metrics.frechet_distance(metrics.GaussianStats(np.zeros(2), np.diag([-1.0, 1.0])), good)
  with pytest.raises(ValueError):
    metrics.frechet_distance(good, metrics.GaussianStats(np.zeros(3), np.eye(3)))


def test_streamed_statistics_equal_numpy_on_the_whole_set():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(1000, 16)) * 3.0 + 100.0  # an offset that naive sums would lose digits to
  acc = metrics.StatsAccumulator()
  for lo, hi in [(0, 1), (1, 300), (300, 301), (301, 1000)]:
    acc.update(x[lo:hi])
  stats = acc.result()
  assert acc.count == 1000
  np.testing.assert_allclose(stats.mu_D, x.mean(0), rtol=1e-13)
  np.testing.assert_allclose(stats.sigma_DD, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
  with pytest.raises(ValueError):
    acc.update(np.zeros((3, 8)))


def test_inception_score_of_uniform_one_hot_classes_is_the_class_count():
  probs = np.tile(np.eye(7), (10 * 3, 1))  # every split holds each class 3 times
  mean, std = metrics.inception_score(probs, splits=10)
  np.testing.assert_allclose([mean, std], [7.0, 0.0], atol=1e-12)


def test_inception_score_of_identical_rows_is_one():
  row = np.random.default_rng(6).dirichlet(np.ones(12))
  mean, std = metrics.inception_score(np.tile(row, (50, 1)), splits=10)
  np.testing.assert_allclose([mean, std], [1.0, 0.0], atol=1e-12)


def test_inception_score_of_a_half_confident_mixture_is_the_closed_form():
  c = 10
  confident, uniform = np.eye(c)[0], np.full(c, 1.0 / c)
  probs = np.tile(np.stack([confident, uniform]), (20, 1))  # each split: 2 of each
  marginal = 0.5 * confident + 0.5 * uniform
  kl_confident = np.log(1.0 / marginal[0])
  kl_uniform = np.sum(uniform * np.log(uniform / marginal))
  want = np.exp(0.5 * kl_confident + 0.5 * kl_uniform)
  mean, std = metrics.inception_score(probs, splits=10)
  np.testing.assert_allclose([mean, std], [want, 0.0], rtol=1e-12, atol=1e-12)


def test_inception_score_rejects_logits():
  with pytest.raises(ValueError):
    metrics.inception_score(np.random.default_rng(7).normal(size=(20, 5)))


def _naive_precision_recall(real, fake, k):
  """Full float64 distance matrices, as in Kynkäänniemi et al."""
  def radii(x):
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k]
  def covered(q, ref, r):
    d = np.sqrt(((q[:, None] - ref[None]) ** 2).sum(-1))
    return (d <= r[None]).any(axis=1).mean()
  return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


@pytest.mark.parametrize('block', [7, 64, 4096])
def test_precision_recall_matches_a_naive_loop_for_any_block_size(block):
  rng = np.random.default_rng(8)
  real = rng.normal(size=(150, 8))
  fake = rng.normal(size=(130, 8)) * 1.3 + 0.4
  got = metrics.precision_recall(real, fake, k=3, block=block)
  np.testing.assert_allclose(got, _naive_precision_recall(real, fake, 3), atol=1e-12)


def test_precision_recall_of_identical_and_of_far_apart_clouds():
  x = np.random.default_rng(9).normal(size=(60, 5))
  assert metrics.precision_recall(x, x, block=16) == (1.0, 1.0)
  assert metrics.precision_recall(x, x + 1e3, block=16) == (0.0, 0.0)


def test_precision_recall_when_fakes_cover_one_of_two_real_modes():
  rng = np.random.default_rng(10)
  mode_a = rng.normal(size=(40, 4))
  mode_b = rng.normal(size=(60, 4)) + 100.0
  real = np.concatenate([mode_a, mode_b])
  # Every fake is a real point of mode A: all fakes are real-looking; only A's 40% is recalled.
  precision, recall = metrics.precision_recall(real, mode_a.copy(), block=32)
  assert precision == 1.0
  np.testing.assert_allclose(recall, 40 / 100)


def test_precision_recall_needs_more_than_k_points():
  with pytest.raises(ValueError):
    metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)


def test_reference_round_trip_and_one_line_errors(tmp_path):
  rng = np.random.default_rng(11)
  stats = metrics.feature_stats(rng.normal(size=(20, 6)))
  images = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
  path = str(tmp_path / 'ref.npz')
  metrics.save_reference(path, stats, images)
  with np.load(path) as f:  # the ADM evaluator's key names
    assert sorted(f.files) == ['arr_0', 'mu', 'sigma']
  loaded = metrics.load_reference(path, dim=6)
  np.testing.assert_array_equal(loaded.mu_D, stats.mu_D)
  np.testing.assert_array_equal(loaded.sigma_DD, stats.sigma_DD)
  np.testing.assert_array_equal(metrics.load_reference_images(path), images)

  with pytest.raises(ValueError):  # wrong feature dimension
    metrics.load_reference(path, dim=2048)
  with pytest.raises(FileNotFoundError):
    metrics.load_reference(str(tmp_path / 'missing.npz'))
  only_images = str(tmp_path / 'samples.npz')
  np.savez(only_images, arr_0=images)  # an ADM sample batch: images only
  with pytest.raises(ValueError):
    metrics.load_reference(only_images)
  not_npz = tmp_path / 'junk.npz'
  not_npz.write_bytes(b'not a zip file')
  with pytest.raises(ValueError):
    metrics.load_reference(str(not_npz))
  with pytest.raises(ValueError):  # float images
    metrics.save_reference(path, stats, images.astype(np.float32))
