"""kNN, linear probe and feature extraction on hand-made data."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.evaluation import features, knn, linear_probe
from mim_jax.models.vit import ViT


def test_knn_on_clusters_gives_the_cluster_labels():
  # Three tight clusters around orthogonal directions; queries near each centre.
  centres = np.eye(3, 5, dtype=np.float32) * 4.0
  rng = np.random.default_rng(0)
  train = np.concatenate([c + 0.1 * rng.normal(size=(10, 5)) for c in centres]).astype(np.float32)
  train_labels = np.repeat([2, 0, 1], 10)  # cluster i has label [2, 0, 1][i]
  queries = (centres[[1, 0, 2, 2, 1]] + 0.1 * rng.normal(size=(5, 5))).astype(np.float32)
  preds = knn.knn_classify(train, train_labels, queries, k=5, temperature=0.07, num_classes=3,
                           chunk_size=2)  # chunks of 2 with a padded last chunk
  np.testing.assert_array_equal(preds, [0, 2, 1, 1, 0])


def numpy_knn(train, labels, test, k, t, c):
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sims = unit(test.astype(np.float64)) @ unit(train.astype(np.float64)).T
  votes = np.zeros((len(test), c))
  for q in range(len(test)):
    for j in np.argsort(-sims[q])[:k]:
      votes[q, labels[j]] += np.exp(sims[q, j] / t)
  return votes


def test_weighted_vote_against_numpy():
  rng = np.random.default_rng(1)
  train = rng.normal(size=(12, 4)).astype(np.float32)
  labels = rng.integers(0, 3, 12)
  test = rng.normal(size=(5, 4)).astype(np.float32)
  want = numpy_knn(train, labels, test, k=4, t=0.5, c=3)
  got = knn.knn_votes(train, labels, test, k=4, temperature=0.5, num_classes=3)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # A vote decided by weights, not counts: two far neighbours of class 0 lose to one close 1.
  train = np.array([[1, 0], [0.6, 0.8], [0.6, -0.8]], np.float32)
  preds = knn.knn_classify(train, [1, 0, 0], np.array([[1, 0.05]], np.float32), k=3,
                           temperature=0.07, num_classes=2)
  assert int(preds[0]) == 1
  assert knn.knn_classify(train, [1, 0, 0], np.array([[1, 0.05]], np.float32), k=3,
                          temperature=10.0, num_classes=2)[0] == 0


def test_knn_accuracy_and_k_larger_than_train():
  train = np.array([[1, 0], [0, 1]], np.float32)
  acc = knn.knn_accuracy(train, [0, 1], np.array([[2, 0.1], [0.1, 3]], np.float32), [0, 1],
                         k=20)
  assert acc == 1.0


def separable(n, seed, d=16, c=4):
  rng = np.random.default_rng(seed)
  w = np.random.default_rng(99).normal(size=(d, c))
  x = rng.normal(size=(n, d)).astype(np.float32) * 3.0 + 5.0  # off-centre, wide: BN matters
  return x, np.argmax(x @ w - (x @ w).mean(0), axis=1)


# LARS moves the kernel by lr * 0.001 * |w| / |g| a step: on 600 points it needs a far larger
# lr than MAE's 0.1 * 16384 / 256 over ImageNet.
@pytest.mark.parametrize("optimizer, base_lr", [("lars", 100.0), ("sgd", 1.0)])
def test_linear_probe_separates_linearly_separable_data(optimizer, base_lr):
  x, y = separable(600, 0)
  xt, yt = separable(300, 1)
  probe = linear_probe.train_linear_probe(x, y, 4, epochs=60, batch_size=64, base_lr=base_lr,
                                          optimizer=optimizer, warmup_epochs=2)
  assert probe.kernel.shape == (16, 4)
  np.testing.assert_allclose(probe.mean, x.mean(0), rtol=1e-5)
  assert linear_probe.probe_accuracy(probe, x, y) > 0.95
  assert linear_probe.probe_accuracy(probe, xt, yt) > 0.9


def test_linear_probe_rejects_bad_shapes():
  with pytest.raises(ValueError, match="feats"):
    linear_probe.train_linear_probe(np.zeros((4, 3)), np.zeros(5), 2)
  with pytest.raises(ValueError, match="optimizer"):
    linear_probe.train_linear_probe(np.zeros((4, 3)), np.zeros(4), 2, optimizer="adam")


def test_extract_features_drops_padding():
  def apply_fn(params, images):
    return images.reshape(images.shape[0], -1)[:, :2] * params

  batches = [
      {"image": jnp.arange(4 * 2, dtype=jnp.float32).reshape(4, 1, 2, 1),
       "label": jnp.array([0, 1, 2, 3]), "valid": jnp.array([True] * 4)},
      {"image": jnp.ones((4, 1, 2, 1)), "label": jnp.array([4, -1, -1, -1]),
       "valid": jnp.array([True, False, False, False])},
  ]
  feats, labels = features.extract_features(apply_fn, 2.0, iter(batches))
  np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4])
  assert feats.shape == (5, 2) and feats.dtype == np.float32
  np.testing.assert_array_equal(feats[:2], [[0, 2], [4, 6]])
  with pytest.raises(ValueError, match="no batches"):
    features.extract_features(apply_fn, 2.0, iter([]))


def test_encoder_fn_and_knn_evaluate():
  vit = ViT(patch=4, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=8)
  x = jax.random.normal(jax.random.key(0), (6, 8, 8, 3))
  params = vit.init(jax.random.key(1), x)["params"]
  fn = features.encoder_fn(vit, pool="mean")
  f = fn(params, x)
  assert f.shape == (6, 32)
  np.testing.assert_allclose(jnp.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
  out, _ = vit.apply({"params": params}, x)
  np.testing.assert_allclose(features.encoder_fn(vit, "cls", normalize=False)(params, x),
                             out[:, 0], atol=1e-6)
  batch = {"image": x, "label": jnp.arange(6) % 2, "valid": jnp.ones(6, bool)}
  # The test pass equals the train pass: each query is its own nearest neighbour (k=1).
  result = knn.knn_evaluate(fn, params, [batch], [batch], k=1, num_classes=2)
  assert result == {"knn/top1": 1.0}
  with pytest.raises(ValueError, match="pool"):
    features.encoder_fn(vit, pool="max")
