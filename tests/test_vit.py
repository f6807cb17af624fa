"""Student ViT: size table, MAE position embedding, visible-token forward, per-block outputs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax import config as config_lib
from mim_jax.models import layers
from mim_jax.models.vit import ViT

# Parameter counts of the encoder without head and without (fixed) position embedding.
# B, S, L and Ti equal timm's vit_*_patch16_224 totals minus the 1000-class head and pos_embed.
PARAM_COUNTS = {
    "nano/4": 18_752,
    "micro/4": 137_216,
    "mini/4": 1_196_288,
    "Ti/16": 5_486_592,
    "S/16": 21_590_016,
    "B/16": 85_647_360,
    "L/16": 303_099_904,
    "H/14": 630_435_840,  # by hand: 32 * (12 D^2 + 13 D) + patch + cls + norm
}


def count(variant: str, image_size: int = 224) -> int:
  model = ViT.from_variant(variant, image_size=image_size)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, image_size, image_size, 3))))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))


def test_every_size_has_a_pinned_count():
  sizes = {v.split("/")[0] for v in PARAM_COUNTS}
  assert sizes == set(config_lib.SIZES), "a registered size has no pinned parameter count"


@pytest.mark.parametrize("variant", sorted(PARAM_COUNTS))
def test_param_count(variant):
  assert count(variant) == PARAM_COUNTS[variant]


def test_decode_variant_errors():
  assert config_lib.decode_variant("L/14") == (config_lib.SIZES["L"], 14)
  with pytest.raises(ValueError, match="Bad ViT variant"):
    config_lib.decode_variant("XL/16")


def mae_posemb_numpy(grid: int, dim: int) -> np.ndarray:
  """Written from MAE's description: first half encodes the column, second the row."""
  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  cols, rows = np.meshgrid(np.arange(grid), np.arange(grid))  # cols varies along a row
  pe = np.concatenate([one_d(dim // 2, cols), one_d(dim // 2, rows)], axis=1)
  return np.concatenate([np.zeros((1, dim)), pe], axis=0)


def test_posemb_is_mae_not_big_vision():
  pe = np.asarray(layers.posemb_sincos_2d((14, 14), 768, cls_token=True))
  np.testing.assert_allclose(pe, mae_posemb_numpy(14, 768), atol=1e-5)
  # patch (row 0, col 1): column channel 0 = sin(1 * omega_0) = sin(1)
  assert pe[2, 0] == pytest.approx(np.sin(1.0), abs=1e-6)
  assert pe[2, 384] == pytest.approx(0.0, abs=1e-6)  # row 0 -> sin(0)


@pytest.fixture(scope="module")
def micro():
  model = ViT.from_variant("micro/4", image_size=16)
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  params = nn.unbox(model.init(jax.random.key(0), images))
  return model, params, images


def test_visible_forward_adds_position_before_gather(micro):
  """Attention is permutation-equivariant: feeding all patches in a permuted order must give
  the permuted outputs only if each patch carries its own position embedding."""
  model, params, images = micro
  full, _ = model.apply(params, images)
  perm = jnp.stack([jax.random.permutation(jax.random.key(i), 16) for i in range(2)])
  out, _ = model.apply(params, images, perm)
  expected = jnp.take_along_axis(full[:, 1:], perm[..., None], axis=1)
  np.testing.assert_allclose(out[:, 1:], expected, atol=1e-5)
  np.testing.assert_allclose(out[:, 0], full[:, 0], atol=1e-5)


def test_visible_subset_shapes_and_blocks(micro):
  model, params, images = micro
  ids = jnp.array([[0, 5, 9, 15], [3, 2, 1, 0]])
  out, aux = model.apply(params, images, ids, attn_layers=(-1,))
  assert out.shape == (2, 5, 64)
  assert len(aux["blocks"]) == 4 and all(b.shape == (2, 5, 64) for b in aux["blocks"])
  assert set(aux["attn"]) == {3} and aux["attn"][3].shape == (2, 4, 5, 5)
  np.testing.assert_allclose(aux["attn"][3].sum(-1), 1.0, atol=1e-5)
  # blocks are the residual stream before the final norm
  norm = params["params"]["norm"]
  np.testing.assert_allclose(
      out, layers.LayerNorm(1e-6).apply({"params": norm}, aux["blocks"][-1]), atol=1e-5)


def test_drop_path_is_stochastic_only_in_training():
  model = ViT.from_variant("micro/4", image_size=16, drop_path=0.5)
  images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  params = nn.unbox(model.init(jax.random.key(0), images))
  run = lambda r, train: model.apply(params, images, train=train, rngs={"dropout": r})[0]
  assert not np.allclose(run(jax.random.key(1), True), run(jax.random.key(2), True))
  np.testing.assert_array_equal(run(jax.random.key(1), False), run(jax.random.key(2), False))


def test_wrong_image_size_is_refused(micro):
  model, params, _ = micro
  with pytest.raises(ValueError, match="expects 16x16"):
    model.apply(params, jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("scan", [False, True])
def test_bf16_stream_student_keeps_its_blocks_in_bf16_and_its_output_in_float32(scan):
  """`student.stream_dtype="bfloat16"`: the residual stream between blocks in bf16, the final
  norm (what heads and losses read) in float32, within bf16's rounding of the float32-stream
  student with the same bf16 matmuls, and a finite float32 gradient of every parameter."""
  from mim_jax import defaults  # pylint: disable=import-outside-toplevel
  from mim_jax.objectives import common  # pylint: disable=import-outside-toplevel
  c = defaults.base("mae")
  c.student.variant, c.data.image_size, c.precision = "nano/4", 16, "bfloat16"
  c.student.scan, c.student.stream_dtype = scan, "bfloat16"
  model = common.make_student(c)
  assert model.stream_dtype == jnp.bfloat16
  ref_model = model.clone(stream_dtype=jnp.float32)
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  params = ref_model.init(jax.random.key(0), images)
  out, aux = model.apply(params, images)
  ref, ref_aux = ref_model.apply(params, images)
  assert out.dtype == jnp.float32 and {b.dtype for b in aux["blocks"]} == {jnp.dtype("bfloat16")}
  assert {b.dtype for b in ref_aux["blocks"]} == {jnp.dtype("float32")}
  assert float(jnp.abs(out - ref).max()) < 5e-2 * float(jnp.abs(ref).max())
  grads = jax.grad(lambda p: (model.apply(p, images)[0] ** 2).mean())(params)
  leaves = jax.tree.leaves(grads)
  assert {g.dtype for g in leaves} == {jnp.dtype("float32")}
  assert all(bool(jnp.isfinite(g).all()) for g in leaves) and any(
      float(jnp.abs(g).max()) > 0 for g in leaves)
