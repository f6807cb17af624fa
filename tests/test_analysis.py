"""Analysis measures against numbers worked out by hand, the Hessian against numpy, the CLI on a
two-step run."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mim_jax.analysis import attention, hessian, plots, spectra, summary

SQRT2 = math.sqrt(2.0)


def uniform(shape_lead, length):
  return jnp.full((*shape_lead, length, length), 1.0 / length)


# ---- attention ---------------------------------------------------------------------------------
def test_uniform_attention_has_entropy_log_l_and_nmi_zero():
  a = uniform((2, 3), 5)
  np.testing.assert_allclose(attention.attention_entropy(a), np.full((2, 3), math.log(5)),
                             rtol=1e-6)
  for norm in ("sqrt", "key"):
    np.testing.assert_allclose(attention.attention_nmi(a, norm), np.zeros((2, 3)), atol=1e-6)


def test_identity_attention_has_distance_zero_entropy_zero_nmi_one():
  a = jnp.broadcast_to(jnp.eye(5), (2, 3, 5, 5))
  for renorm in (False, True):
    np.testing.assert_allclose(attention.average_attention_distance(a, (2, 2), 1, renorm),
                               np.zeros((2, 3)), atol=1e-7)
  np.testing.assert_allclose(attention.attention_entropy(a), np.zeros((2, 3)), atol=1e-7)
  for norm in ("sqrt", "key"):
    np.testing.assert_allclose(attention.attention_nmi(a, norm), np.ones((2, 3)), rtol=1e-6)


def test_nmi_of_a_hand_case():
  # Two queries over two keys: q0 -> k0 always, q1 -> uniform. p(k) = (3/4, 1/4);
  # H(K) = -(3/4 log 3/4 + 1/4 log 1/4); H(K|Q) = (0 + log 2) / 2; H(Q) = log 2.
  a = jnp.array([[1.0, 0.0], [0.5, 0.5]])
  h_k = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
  mi = h_k - 0.5 * math.log(2.0)
  np.testing.assert_allclose(attention.attention_nmi(a), mi / math.sqrt(math.log(2.0) * h_k),
                             rtol=1e-5)
  np.testing.assert_allclose(attention.attention_nmi(a, "key"), mi / h_k, rtol=1e-5)
  # Every query on the same key: I = H(K) = 0, defined as 0 rather than 0 / 0.
  same = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  assert float(attention.attention_nmi(same)) == 0.0
  with pytest.raises(ValueError, match="normalization"):
    attention.attention_nmi(a, "joint")


def hand_attention_2x2():
  """[5, 5]: token 0 = CLS, patches 1..4 at (0,0), (0,1), (1,0), (1,1)."""
  a = np.zeros((5, 5), np.float32)
  a[0] = [0.2, 0.2, 0.2, 0.2, 0.2]
  a[1, [0, 1, 4]] = [0.2, 0.2, 0.6]  # (0,0): 0.6 on (1,1), sqrt 2 away
  a[2, [1, 3]] = [0.5, 0.5]  # (0,1): 0.5 on (0,0) (1 away), 0.5 on (1,0) (sqrt 2 away)
  a[3, 3] = 1.0  # (1,0): itself
  a[4, [0, 1, 2]] = [0.5, 0.25, 0.25]  # (1,1): 0.25 on (0,0) (sqrt 2), 0.25 on (0,1) (1)
  return a


def test_average_distance_on_a_hand_built_2x2_grid():
  a = hand_attention_2x2()
  raw = (0.6 * SQRT2 + (0.5 + 0.5 * SQRT2) + 0.0 + (0.25 * SQRT2 + 0.25)) / 4
  renorm = (0.75 * SQRT2 + (0.5 + 0.5 * SQRT2) + 0.0 + (0.5 * SQRT2 + 0.5)) / 4
  np.testing.assert_allclose(attention.average_attention_distance(a, (2, 2)), raw, rtol=1e-6)
  np.testing.assert_allclose(attention.average_attention_distance(a, (2, 2), renormalize=True),
                             renorm, rtol=1e-6)


def test_distance_is_row_major_on_a_non_square_grid():
  # Grid 2x3 without a prefix: patch 0 = (0, 0) attends to patch 5 = (1, 2), sqrt 5 away; the
  # others attend to themselves.
  a = np.eye(6, dtype=np.float32)
  a[0] = 0.0
  a[0, 5] = 1.0
  np.testing.assert_allclose(attention.average_attention_distance(a, (2, 3), num_prefix=0),
                             math.sqrt(5.0) / 6, rtol=1e-6)
  with pytest.raises(ValueError, match=r"\[\.\.\., 7, 7\]"):
    attention.average_attention_distance(a, (2, 3))


def test_attention_maps_pick_rows_and_reshape():
  a = hand_attention_2x2()
  np.testing.assert_allclose(attention.cls_attention_map(a, (2, 2)), np.full((2, 2), 0.2))
  maps = attention.query_attention_maps(jnp.asarray(a)[None], (2, 2), [0, 3])
  assert maps.shape == (1, 2, 2, 2)
  np.testing.assert_allclose(maps[0, 0], [[0.2, 0.0], [0.0, 0.6]])  # CLS's 0.2 left out
  np.testing.assert_allclose(maps[0, 1], [[0.25, 0.25], [0.0, 0.0]])


# ---- spectra -----------------------------------------------------------------------------------
def test_rank_one_token_matrix_has_spectrum_one_then_zeros():
  rng = np.random.default_rng(0)
  u, v = rng.normal(size=(3, 9, 1)), rng.normal(size=(3, 1, 6))
  s = spectra.token_spectrum(jnp.asarray(u * v, jnp.float32))
  np.testing.assert_allclose(s, [1, 0, 0, 0, 0, 0], atol=1e-5)


def test_token_spectrum_averages_relative_spectra_over_images():
  # Image 0: rows on one axis, rank 1 -> [1, 0]. Image 1: centred rows +-e1, +-e2, so
  # X^T X = 2 I and s = (sqrt 2, sqrt 2) -> [1, 1]. Mean: [1, 0.5].
  img0 = [[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [-2.0, 0.0]]
  img1 = [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]
  np.testing.assert_allclose(spectra.token_spectrum(jnp.array([img0, img1])), [1.0, 0.5],
                             atol=1e-6)
  # Not centred: a constant offset is a direction of its own.
  np.testing.assert_allclose(
      spectra.relative_singular_values(jnp.array([[3.0, 0.0], [0.0, 1.0]]), center=False),
      [1.0, 1.0 / 3.0], rtol=1e-6)


def test_image_spectrum_and_log_floor():
  feats = jnp.array([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
  # Centred already; singular values 2 sqrt 2 and sqrt 2 and 0 -> [1, 1/2, 0].
  s = spectra.image_spectrum(feats)
  np.testing.assert_allclose(s, [1.0, 0.5, 0.0], atol=1e-6)
  np.testing.assert_allclose(spectra.log_relative(s), [0.0, math.log(0.5), math.log(1e-6)],
                             rtol=1e-5, atol=1e-6)
  pooled = spectra.mean_pool(jnp.ones((2, 4, 3)))
  assert pooled.shape == (2, 3)
  assert spectra.spectrum_rank_bound(4, 3) == 3 and spectra.spectrum_rank_bound(3, 8) == 2


def test_fourier_of_a_constant_and_of_a_checkerboard():
  const = jnp.ones((2, 4, 4, 3))  # |F| = 16 at (0, 0), 0 elsewhere
  expected = math.log(1e-6) - math.log(16.0 + 1e-6)
  profile = spectra.relative_log_amplitude(const)
  assert profile.shape == (3,)
  np.testing.assert_allclose(profile, [0.0, expected, expected], rtol=1e-5)
  np.testing.assert_allclose(spectra.high_frequency_log_amplitude(const), expected, rtol=1e-5)
  # (-1)^(i + j): all energy at (pi, pi), |F| = 16 there, none at (0, 0).
  sign = (-1.0) ** (np.arange(4)[:, None] + np.arange(4)[None, :])
  checker = jnp.asarray(np.broadcast_to(sign[None, :, :, None], (1, 4, 4, 2)), jnp.float32)
  np.testing.assert_allclose(spectra.high_frequency_log_amplitude(checker), -expected,
                             rtol=1e-5)


def test_fourier_log_amplitude_matches_numpy():
  x = np.random.default_rng(1).normal(size=(2, 6, 6, 5)).astype(np.float32)
  ref = np.log(np.abs(np.fft.fft2(x, axes=(1, 2))) + 1e-6).mean(axis=(0, 3))
  np.testing.assert_allclose(spectra.fourier_log_amplitude(jnp.asarray(x)), ref, atol=1e-4)
  tokens = jnp.asarray(x.reshape(2, 36, 5))
  np.testing.assert_array_equal(spectra.tokens_to_grid(tokens, (6, 6)), x)
  with pytest.raises(ValueError, match="square"):
    spectra.relative_log_amplitude(jnp.zeros((1, 2, 4, 1)))


# ---- Hessian -----------------------------------------------------------------------------------
EIGS = np.array([5.0, 3.0, 1.5, 1.0, 0.5, 0.2, -0.1, 0.05])


def quadratic():
  """0.5 x^T A x over a pytree {w: [2, 3], b: [2]} (x = [w.ravel(), b]), A = Q diag(EIGS) Q^T."""
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))
  a = (q * EIGS) @ q.T
  a = 0.5 * (a + a.T)
  a_j = jnp.asarray(a, jnp.float32)

  def flat(p):
    return jnp.concatenate([p["w"].reshape(-1), p["b"]])

  def loss(p):
    x = flat(p)
    return 0.5 * x @ a_j @ x
  x0 = np.random.default_rng(1).normal(size=8).astype(np.float32)
  params = {"w": jnp.asarray(x0[:6].reshape(2, 3)), "b": jnp.asarray(x0[6:])}
  return a, loss, params, flat


def test_hvp_is_a_times_v():
  a, loss, params, flat = quadratic()
  v = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.array([1.0, -1.0])}
  np.testing.assert_allclose(flat(hessian.hvp(loss, params, v)), a @ np.asarray(flat(v)),
                             rtol=1e-5, atol=1e-5)


def test_top_eigenvalues_of_a_quadratic_match_eigvalsh():
  a, loss, params, flat = quadratic()
  ref_vals, ref_vecs = np.linalg.eigh(a)
  order = np.argsort(-np.abs(ref_vals))
  pairs = hessian.top_eigenpairs(loss, params, jax.random.key(0), k=3, max_iters=1000,
                                 tol=1e-7)
  np.testing.assert_allclose(pairs.values, ref_vals[order[:3]], atol=1e-4)
  np.testing.assert_allclose(pairs.values[:2], np.sort(np.linalg.eigvalsh(a))[::-1][:2],
                             atol=1e-4)
  for i, vec in enumerate(pairs.vectors):
    cos = abs(float(np.dot(flat(vec), ref_vecs[:, order[i]])))
    assert cos > 1 - 1e-4, (i, cos)
  assert (np.asarray(pairs.iterations) < 1000).all()  # converged, not cut off


def test_hutchinson_trace_is_exact_for_a_diagonal_hessian():
  d = jnp.array([4.0, -1.0, 2.5, 0.5])
  loss = lambda p: 0.5 * jnp.sum(d * p["x"] ** 2)
  tr = hessian.hutchinson_trace(loss, {"x": jnp.ones(4)}, jax.random.key(3), num_samples=3)
  np.testing.assert_allclose(tr, 6.0, rtol=1e-6)


def test_loss_surface_along_eigenvectors_of_a_quadratic():
  a, loss, _, flat = quadratic()
  zero = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(2)}
  land = hessian.eigen_landscape(loss, zero, jax.random.key(0), radius=2.0, num_points=5,
                                 max_iters=1000, tol=1e-7)
  np.testing.assert_allclose(land.eigenvalues, [5.0, 3.0], atol=1e-4)
  al, be = np.meshgrid(land.alphas, land.betas, indexing="ij")
  np.testing.assert_allclose(land.surface, 0.5 * (5.0 * al ** 2 + 3.0 * be ** 2), atol=1e-3)
  assert land.surface.shape == (5, 5) and land.alphas[0] == -2.0


def test_filter_normalize_matches_parameter_column_norms():
  params = {"k": jnp.array([[3.0, 0.0], [4.0, 2.0]]), "bias": jnp.array([1.0, 2.0])}
  d = {"k": jnp.array([[1.0, 1.0], [0.0, 1.0]]), "bias": jnp.array([5.0, 5.0])}
  out = hessian.filter_normalize(d, params)
  np.testing.assert_allclose(jnp.linalg.norm(out["k"], axis=0), [5.0, 2.0], rtol=1e-6)
  np.testing.assert_allclose(out["k"][:, 0], [5.0, 0.0], rtol=1e-6)  # direction kept
  np.testing.assert_array_equal(out["bias"], [0.0, 0.0])


# ---- summary and plots -------------------------------------------------------------------------
def tiny_vit_outputs():
  from mim_jax.models.vit import ViT
  vit = ViT(patch=4, width=16, depth=2, num_heads=2, mlp_dim=32, image_size=16)
  x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  params = vit.init(jax.random.key(1), x)["params"]
  _, aux = vit.apply({"params": params}, x, attn_layers=(0, 1))
  return vit, aux


def test_layer_measures_shapes_and_ranges():
  vit, aux = tiny_vit_outputs()
  m = summary.layer_measures(aux["blocks"], aux["attn"], vit.grid, queries=(0, 5), num_maps=2)
  assert m["attention_distance"].shape == m["attention_nmi"].shape == (2, 2)
  assert m["token_spectrum"].shape == (2, 16) and m["image_spectrum"].shape == (2, 3)
  assert m["fourier"].shape == (2, 3) and m["fourier_high"].shape == (2,)
  assert m["cls_maps"].shape == (2, 2, 2, 4, 4)
  assert m["query_maps"].shape == (2, 2, 2, 2, 4, 4)
  assert set(summary.NUMBERS) <= set(m)
  assert (m["attention_entropy"] <= math.log(17) + 1e-5).all()
  assert ((m["attention_nmi"] >= 0) & (m["attention_nmi"] <= 1 + 1e-6)).all()
  np.testing.assert_allclose(m["token_spectrum"][:, 0], 1.0, rtol=1e-6)
  np.testing.assert_allclose(m["attention_distance"][1],
                             attention.average_attention_distance(aux["attn"][1], (4, 4)).mean(0),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="missing for layers"):
    summary.layer_measures(aux["blocks"], {0: aux["attn"][0]}, vit.grid)


def png_size(path):
  with Image.open(path) as im:
    return im.size


def test_plots_write_pngs_of_the_asked_size(tmp_path):
  per_head = {"student": np.arange(12.0).reshape(4, 3), "teacher": np.ones((4, 3))}
  out = plots.plot_per_head(per_head, str(tmp_path / "a.png"), ylabel="d")
  assert png_size(out) == (700, 450)
  out = plots.plot_per_layer({"s": np.arange(4.0)}, str(tmp_path / "b.png"), ylabel="x",
                             figsize=(4, 3), dpi=50)
  assert png_size(out) == (200, 150)
  out = plots.plot_layer_curves({"s": np.ones((4, 5)), "t": np.ones((4, 5))},
                                str(tmp_path / "c.png"), xlabel="i", ylabel="y")
  assert png_size(out) == (1000, 400)
  out = plots.plot_maps(np.random.default_rng(0).random((2, 3, 4, 4)), str(tmp_path / "d.png"),
                        row_labels=["l1", "l2"], col_labels=["q0", "q1", "q2"])
  assert png_size(out) == (480, 320)
  steps = np.linspace(-1, 1, 5)
  out = plots.plot_landscape(steps, steps, steps[:, None] ** 2 + steps[None] ** 2,
                             str(tmp_path / "e.png"))
  assert png_size(out) == (600, 500)
  plots.plot_landscape(steps, steps, np.zeros((5, 5)), str(tmp_path / "flat.png"))


def test_plots_validate(tmp_path):
  with pytest.raises(ValueError, match=r"\[L, H\]"):
    plots.plot_per_head({"s": np.ones(4)}, str(tmp_path / "x.png"), ylabel="d")
  with pytest.raises(ValueError, match="empty"):
    plots.plot_per_layer({}, str(tmp_path / "x.png"), ylabel="d")
  with pytest.raises(ValueError, match=r"len\(alphas\)"):
    plots.plot_landscape(np.ones(3), np.ones(4), np.ones((4, 3)), str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="non-finite"):
    plots.plot_maps(np.full((1, 1, 2, 2), np.nan), str(tmp_path / "x.png"))


# ---- the CLI -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_on_a_two_step_run(tmp_path, tiny_vit_teacher_dir):
  from configs import maskalign_b16_clip_b16
  from mim_jax import train
  from mim_jax.analysis import cli
  from mim_jax.data import input_pipeline

  config = maskalign_b16_clip_b16.get_config("runlocal=True")
  config.teacher.spec = tiny_vit_teacher_dir
  config.total_steps = 2
  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(config, workdir)

  out = str(tmp_path / "analysis")
  report = cli.main(["--workdir", workdir, "--out", out, "--batch_size", "16", "--teacher",
                     "--hessian", "--hessian_iters", "5", "--landscape_points", "3"])
  with open(os.path.join(out, "analysis.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 2 and saved["grid"] == [4, 4] and saved["num_images"] == 16
  depth, heads = 2, 2  # nano/4 student; the teacher fixture is 2 blocks of 2 heads too
  for name in ("student", "teacher"):
    m = saved["measures"][name]
    assert np.asarray(m["attention_distance"]).shape == (depth, heads)
    assert np.asarray(m["fourier"]).shape == (depth, 3)
    np.testing.assert_allclose(np.asarray(m["token_spectrum"])[:, 0], 1.0, rtol=1e-5)
  assert len(saved["hessian"]["eigenvalues"]) == 2
  surface = np.asarray(saved["hessian"]["surface"])
  assert surface.shape == (3, 3)
  np.testing.assert_allclose(surface[1, 1], saved["hessian"]["loss_at_params"], rtol=1e-5)
  for png in saved["plots"]:
    assert os.path.isfile(png) and png_size(png)[0] > 0
  assert report["measures"] == saved["measures"]

  # The numbers are those of the trained parameters on the first eval images.
  mesh = result.setup.mesh
  batch = next(iter(input_pipeline.make_eval_iterator(config.data, global_batch_size=16,
                                                      mesh=mesh)))
  student = result.setup.model_student()
  _, aux = student.apply({"params": result.state.params["student"]}, batch["image"],
                         attn_layers=(0, 1))
  for i in range(depth):
    np.testing.assert_allclose(
        saved["measures"]["student"]["attention_distance"][i],
        attention.average_attention_distance(aux["attn"][i], (4, 4)).mean(0), rtol=1e-4)


@pytest.mark.slow
def test_cli_hessian_of_a_fine_tune_workdir(tmp_path):
  """A fine-tune workdir: the loss is the classification loss of the eval images, its Hessian's
  eigenvalues and trace are reported."""
  from configs import finetune_b16
  from mim_jax import train
  from mim_jax.analysis import cli
  from mim_jax.data import input_pipeline
  from mim_jax.objectives import classify

  config = finetune_b16.get_config("runlocal=True")
  config.total_steps, config.async_checkpoint = 2, False
  workdir = str(tmp_path / "ft")
  result = train.train_and_evaluate(config, workdir)
  report = cli.main(["--workdir", workdir, "--out", str(tmp_path / "a"), "--batch_size", "16",
                     "--hessian", "--hessian_iters", "5", "--landscape_points", "3",
                     "--trace_samples", "4"])
  h = report["hessian"]
  assert h["loss"].startswith("classification") and np.isfinite(h["trace"])
  assert len(h["eigenvalues"]) == 2
  batch = next(iter(input_pipeline.make_eval_iterator(config.data, global_batch_size=16,
                                                      mesh=result.setup.mesh)))
  out = result.setup.model.apply({"params": result.state.params}, batch["image"], None,
                                 train=False)
  want = float(classify.loss_fn(out, None, None, batch, config)[0])
  assert h["loss_at_params"] == pytest.approx(want, rel=1e-5)
