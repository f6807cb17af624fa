"""Student ViT options: dense inpainting, relative position bias, layer scale, BEiT init,
mid-depth mask tokens."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.convert import layout
from mim_jax.models import layers
from mim_jax.models import vit as vit_lib
from mim_jax.models.vit import ViT

# Truncation at +-2 std shrinks the standard deviation of a unit normal to this.
TRUNC_STD = 0.8796


def micro(**kw) -> ViT:
  return ViT.from_variant("micro/4", image_size=16, **kw)


def init(model, images, **kw):
  return nn.unbox(model.init(jax.random.key(0), images, **kw))


@pytest.fixture(scope="module")
def images():
  return jax.random.normal(jax.random.key(1), (2, 16, 16, 3))


# ---- relative position bias -----------------------------------------------------------------
def test_relative_position_index_2x2_by_hand():
  # Offsets (d_row + 1) * 3 + (d_col + 1) of query minus key; 9, 10, 11 are the CLS entries.
  expected = np.array([
      [11, 9, 9, 9, 9],
      [10, 4, 3, 1, 0],
      [10, 5, 4, 2, 1],
      [10, 7, 6, 4, 3],
      [10, 8, 7, 5, 4],
  ])
  np.testing.assert_array_equal(vit_lib.relative_position_index((2, 2)), expected)
  assert vit_lib.num_relative_distances((2, 2)) == 12


def test_relative_position_index_3x3_is_a_function_of_the_offset_only():
  index = vit_lib.relative_position_index((3, 3))
  assert vit_lib.num_relative_distances((3, 3)) == 5 * 5 + 3
  coords = [(r, c) for r in range(3) for c in range(3)]
  by_offset = {}
  for q, (rq, cq) in enumerate(coords):
    for k, (rk, ck) in enumerate(coords):
      by_offset.setdefault((rq - rk, cq - ck), set()).add(int(index[1 + q, 1 + k]))
  assert all(len(v) == 1 for v in by_offset.values())  # same offset -> same entry
  entries = sorted(v.pop() for v in by_offset.values())
  assert entries == list(range(25))  # 25 offsets -> 25 distinct entries, before the CLS ones
  assert index[1, 1] == 12 and index[1 + 8, 1] == 24 and index[1, 1 + 8] == 0


def test_rel_pos_table_shape_zero_init_and_shared(images):
  model = micro(rel_pos="shared", posemb="none")
  params = init(model, images)["params"]
  table = params["rel_pos_bias"]["table"]
  assert table.shape == ((2 * 4 - 1) ** 2 + 3, 4)
  np.testing.assert_array_equal(table, 0.0)
  assert not any(k.startswith("rel_pos_bias_") for k in params)  # one table for all blocks
  # A zero table is no bias at all: same outputs as the model without one.
  plain = micro(posemb="none")
  rest = {k: v for k, v in params.items() if k != "rel_pos_bias"}
  np.testing.assert_allclose(model.apply({"params": params}, images)[0],
                             plain.apply({"params": rest}, images)[0], atol=1e-6)


def test_per_layer_tables_and_unsharing(images):
  shared = micro(rel_pos="shared", posemb="none")
  params = init(shared, images)["params"]
  params["rel_pos_bias"]["table"] = jax.random.normal(jax.random.key(3), (52, 4))
  per_layer = micro(rel_pos="per_layer", posemb="none")
  own = init(per_layer, images)["params"]
  assert {f"rel_pos_bias_{i}" for i in range(4)} <= set(own) and "rel_pos_bias" not in own
  unshared = layout.unshare_relative_position_bias(params, depth=4)
  np.testing.assert_allclose(shared.apply({"params": params}, images)[0],
                             per_layer.apply({"params": unshared}, images)[0], atol=1e-5)


def test_bias_reaches_attention_as_the_table_says(images):
  model = micro(rel_pos="shared", posemb="none")
  params = init(model, images)["params"]
  table = jax.random.normal(jax.random.key(3), (52, 4))
  params["rel_pos_bias"]["table"] = table
  bias = vit_lib.RelativePositionBias((4, 4), 4).apply({"params": {"table": table}})
  index = vit_lib.relative_position_index((4, 4))
  h, q, k = 2, 5, 11
  assert bias.shape == (4, 17, 17)
  assert float(bias[h, q, k]) == float(table[index[q, k], h])
  assert float(bias[h, 0, k]) == float(table[49, h])  # cls -> token
  assert float(bias[h, q, 0]) == float(table[50, h])  # token -> cls
  # Block 0's attention logits are those of a bias-free block plus this bias.
  _, aux = model.apply({"params": params}, images, attn_layers=(0,))
  x0 = jnp.concatenate([jnp.broadcast_to(params["cls"], (2, 1, 64)), layers.PatchEmbed(
      4, 64).apply({"params": params["patch_embed"]}, images)], axis=1)
  _, probs = layers.Block(4, 128, layer_scale=None).apply(
      {"params": params["block0"]}, x0, bias, True, True)
  np.testing.assert_allclose(aux["attn"][0], probs, atol=1e-6)


def test_visible_forward_gathers_the_bias_per_example(images):
  """No absolute embedding: only the relative bias tells positions apart. Feeding all patches in
  a permuted order gives the permuted outputs only if the bias is gathered at the right
  (query, key) pairs for each example."""
  model = micro(rel_pos="shared", posemb="none")
  params = init(model, images)["params"]
  params["rel_pos_bias"]["table"] = jax.random.normal(jax.random.key(3), (52, 4))
  full, _ = model.apply({"params": params}, images)
  perm = jnp.stack([jax.random.permutation(jax.random.key(i), 16) for i in range(2)])
  out, _ = model.apply({"params": params}, images, perm)
  np.testing.assert_allclose(out[:, 1:], jnp.take_along_axis(full[:, 1:], perm[..., None], 1),
                             atol=1e-5)
  np.testing.assert_allclose(out[:, 0], full[:, 0], atol=1e-5)


# ---- dense inpainting -----------------------------------------------------------------------
def test_inpainting_hides_masked_pixels_only(images):
  model = micro(rel_pos="shared", posemb="none")
  mask = jnp.zeros((2, 16)).at[:, 5].set(1.0).at[1, 10].set(1.0)
  params = init(model, images, mask=mask)["params"]
  run = lambda x: model.apply({"params": params}, x, mask=mask)[0]
  base = run(images)
  assert base.shape == (2, 17, 64)
  # Patch 5 (row 1, col 1) covers pixels [4:8, 4:8]; patch 6 (row 1, col 2) [4:8, 8:12].
  noise = 10 * jax.random.normal(jax.random.key(9), (2, 4, 4, 3))
  masked_changed = images.at[:, 4:8, 4:8].add(noise)
  np.testing.assert_array_equal(run(masked_changed), base)
  visible_changed = images.at[:, 4:8, 8:12].add(noise)
  assert np.abs(run(visible_changed) - base).max() > 1e-3  # the test can fail
  # And the masked position does carry the learned token: changing it changes the output. (Not
  # by a constant: every LayerNorm, the final one included, ignores a shift of all channels.)
  params2 = dict(params)
  params2["mask_token"] = params["mask_token"] + jax.random.normal(jax.random.key(4), (1, 1, 64))
  changed = model.apply({"params": params2}, images, mask=mask)[0]
  assert np.abs(changed - base).max() > 1e-3


def test_inpainting_input_is_the_blend(images):
  """The sequence entering block 0 is [cls, x * (1 - m) + mask_token * m (+ pos)]."""
  model = micro()  # sin-cos position embedding, added after the blend
  mask = jnp.zeros((2, 16)).at[0, 3].set(1.0)
  params = init(model, images, mask=mask)["params"]
  _, aux = model.apply({"params": params}, images, mask=mask)
  x = layers.PatchEmbed(4, 64).apply({"params": params["patch_embed"]}, images)
  x = x.at[0, 3].set(params["mask_token"][0, 0])
  pos = layers.posemb_sincos_2d((4, 4), 64, cls_token=True)
  x0 = jnp.concatenate([jnp.broadcast_to(params["cls"], (2, 1, 64)), x], 1) + pos[None]
  expected, _ = layers.Block(4, 128).apply({"params": params["block0"]}, x0)
  np.testing.assert_allclose(aux["blocks"][0], expected, atol=1e-5)


def test_zero_mask_is_the_plain_forward(images):
  model = micro(rel_pos="shared", posemb="none", layer_scale=0.1)
  params = init(model, images, mask=jnp.zeros((2, 16)))["params"]
  dense, _ = model.apply({"params": params}, images, mask=jnp.zeros((2, 16)))
  plain, _ = model.apply({"params": params}, images)
  np.testing.assert_allclose(dense, plain, atol=1e-6)
  with pytest.raises(ValueError, match="not both"):
    model.apply({"params": params}, images, jnp.zeros((2, 4), jnp.int32), mask=jnp.zeros((2, 16)))


# ---- layer scale and init -------------------------------------------------------------------
def test_layer_scale_init_values(images):
  params = init(micro(layer_scale=0.1), images)["params"]
  for i in range(4):
    for name in ("ls1", "ls2"):
      np.testing.assert_array_equal(params[f"block{i}"][name], np.full((64,), 0.1, np.float32))
  params = init(micro(layer_scale=1e-5), images)["params"]
  np.testing.assert_allclose(params["block1"]["ls2"], 1e-5)
  assert "ls1" not in init(micro(), images)["params"]["block0"]  # off by default


def test_beit_init_rescales_output_kernels(images):
  params = init(micro(weight_init="beit"), images)["params"]
  std = lambda x: float(np.std(np.asarray(x)))
  expect = 0.02 * TRUNC_STD
  for i in range(4):
    block = params[f"block{i}"]
    scale = 1.0 / np.sqrt(2.0 * (i + 1))
    for kernel in (block["attn"]["out_kernel"], block["mlp"]["fc2"]["kernel"]):
      assert std(kernel) == pytest.approx(expect * scale, rel=0.05)
      assert np.abs(kernel).max() <= 2 * 0.02 * scale + 1e-7  # truncated at 2 std
    for kernel in (block["attn"]["qkv_kernel"], block["mlp"]["fc1"]["kernel"]):
      assert std(kernel) == pytest.approx(expect, rel=0.05)
  assert std(params["patch_embed"]["kernel"]) == pytest.approx(expect, rel=0.1)
  assert np.abs(params["cls"]).max() <= 0.04
  # MAE's default: xavier-uniform, no depth rescaling (bound sqrt(6 / (D + D))).
  mae = init(micro(), images)["params"]
  bound = np.sqrt(6.0 / 128)
  assert std(mae["block3"]["attn"]["out_kernel"]) == pytest.approx(bound / np.sqrt(3), rel=0.05)


# ---- mid-depth mask tokens ------------------------------------------------------------------
def block_apply(params, i, x, bias=None):
  return layers.Block(4, 128).apply({"params": params[f"block{i}"]}, x, bias)[0]


def test_mid_mask_replaces_exactly_the_chosen_tokens(images):
  model = micro()
  ids_keep = jnp.array([[0, 3, 5, 6, 9, 12, 14, 15], [1, 2, 4, 7, 8, 10, 11, 13]])
  mid_mask = jnp.zeros((2, 8), bool).at[0, 2].set(True).at[1, 0].set(True).at[1, 7].set(True)
  k = 2
  params = init(model, images, ids_keep=ids_keep, mid_mask=mid_mask, mid_depth=k)["params"]
  _, plain = model.apply({"params": params}, images, ids_keep)
  out, mid = model.apply({"params": params}, images, ids_keep, mid_mask=mid_mask, mid_depth=k)
  for i in range(k):  # blocks before depth k do not see the tokens
    np.testing.assert_array_equal(mid["blocks"][i], plain["blocks"][i])
  # The input of block k: block k-1's output with the chosen tokens replaced by
  # mid_mask_token + the position embedding of their patch, every other token untouched.
  pos = layers.posemb_sincos_2d((4, 4), 64)
  fill = params["mid_mask_token"][0, 0] + pos[ids_keep]  # [B, n, D]
  x_in = plain["blocks"][k - 1]
  x_in = x_in.at[:, 1:].set(jnp.where(mid_mask[..., None], fill, x_in[:, 1:]))
  np.testing.assert_allclose(mid["blocks"][k], block_apply(params, k, x_in), atol=1e-5)
  assert out.shape == (2, 9, 64)
  # A different replaced set gives a different block-k output: the comparison is sharp.
  other = plain["blocks"][k - 1].at[:, 1:].set(
      jnp.where(jnp.roll(mid_mask, 1, 1)[..., None], fill, plain["blocks"][k - 1][:, 1:]))
  assert np.abs(block_apply(params, k, other) - mid["blocks"][k]).max() > 1e-3


def test_mid_ids_append_tokens_with_their_relative_positions(images):
  model = micro(rel_pos="shared", posemb="none")
  ids_keep = jnp.array([[0, 5, 10, 15], [3, 6, 9, 12]])
  mid_ids = jnp.array([[1, 2], [4, 8]])
  k = 1
  params = init(model, images, ids_keep=ids_keep, mid_ids=mid_ids, mid_depth=k)["params"]
  params["rel_pos_bias"]["table"] = jax.random.normal(jax.random.key(3), (52, 4))
  out, mid = model.apply({"params": params}, images, ids_keep, mid_ids=mid_ids, mid_depth=k)
  _, plain = model.apply({"params": params}, images, ids_keep)
  assert out.shape == (2, 7, 64)
  assert [b.shape[1] for b in mid["blocks"]] == [5, 7, 7, 7]
  np.testing.assert_array_equal(mid["blocks"][0], plain["blocks"][0])
  new = jnp.broadcast_to(params["mid_mask_token"], (2, 2, 64))  # posemb "none": no position
  x_in = jnp.concatenate([plain["blocks"][0], new], axis=1)
  bias = vit_lib.RelativePositionBias((4, 4), 4).apply(
      {"params": params["rel_pos_bias"]}, jnp.concatenate([ids_keep, mid_ids], 1))
  np.testing.assert_allclose(mid["blocks"][1], block_apply(params, 1, x_in, bias), atol=1e-5)


def test_mid_depth_is_checked(images):
  model = micro()
  with pytest.raises(ValueError, match="mid_depth"):
    init(model, images, mid_mask=jnp.zeros((2, 16)), mid_depth=4)


def saved_for_backward(model, x) -> int:
  """Bytes the forward pass keeps for the backward pass: the residuals `jax.vjp` closes over
  (activations, and the parameters the backward matmuls read), from shapes alone. This is
  backend-independent; XLA:CPU's compiled memory cannot show remat: it drops the optimisation
  barriers and CSE merges the recomputation back (measured: equal `temp_size_in_bytes` of the
  jitted loss and gradient for "none" and "full")."""
  params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(1), x))["params"])

  def loss(p):
    return jnp.mean(model.apply({"params": p}, x)[0] ** 2)
  residuals = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params)
  return sum(r.size * r.dtype.itemsize for r in jax.tree.leaves(residuals))


@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
def test_remat_changes_memory_not_numbers(remat):
  """Every remat policy gives the plain student's loss and gradients (same parameter tree), and
  keeps fewer bytes for the backward pass, unscanned and scanned; "full" keeps the fewest (the
  blocks' inputs)."""
  kw = dict(patch=4, width=32, depth=3, num_heads=2, mlp_dim=64, image_size=16)
  plain, rematted = ViT(**kw), ViT(remat=remat, **kw)
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  params = plain.init(jax.random.key(1), x)["params"]

  def loss(model):
    return jax.value_and_grad(lambda p: jnp.mean(model.apply({"params": p}, x)[0] ** 2))

  (l0, g0), (l1, g1) = loss(plain)(params), loss(rematted)(params)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  chex.assert_trees_all_close(g1, g0, rtol=1e-5, atol=1e-7)

  for scan in (False, True):
    saved = {r: saved_for_backward(ViT(remat=r, scan=scan, **kw), x)
             for r in ("none", "full", remat)}
    # measured, both layouts: none 1.36 MB, dots 0.67, dots_no_batch 0.56, full 0.25
    assert saved[remat] < 0.6 * saved["none"], (scan, saved)
    assert saved["full"] <= saved[remat] and saved["full"] < 0.25 * saved["none"], (scan, saved)


def test_unknown_remat_is_refused():
  with pytest.raises(ValueError, match="Unknown remat 'some'"):
    ViT(patch=4, width=32, depth=1, num_heads=2, mlp_dim=64, image_size=16, remat="some").init(
        jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
