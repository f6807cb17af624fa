"""student.scan: the blocks under nn.scan compute what the unscanned blocks compute (same
parameters, restacked), and every reader of block parameters by name sees the block{i} layout."""
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax import export, init_from, masking, optim
from mim_jax.convert import scan
from mim_jax.models import vit as vit_lib
from mim_jax.models.vit import ViT
from mim_jax.objectives import maskalign, mrmae


def random_params(model, *args, seed=0):
  """Random float32 params of `model`'s shapes (no init compiled: RNG code is slow on CPU)."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(2), *args))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)


def scanned(model):
  return model.clone(student=model.student.clone(scan=True))


def restacked(params, depth):
  return {**params, "student": scan.stack_blocks(params["student"], depth)}


def assert_same_loss_and_grads(model, loss_of, params):
  """`loss_of(model)(params)` and its gradients equal for the unscanned and scanned model."""
  depth = model.student.depth
  l0, g0 = jax.jit(jax.value_and_grad(loss_of(model)))(params)
  l1, g1 = jax.jit(jax.value_and_grad(loss_of(scanned(model))))(restacked(params, depth))
  assert float(l0) > 0
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  chex.assert_trees_all_close({**g1, "student": scan.unstack_blocks(g1["student"])}, g0,
                              rtol=1e-5, atol=1e-7)
  return g1


def test_maskalign_scanned_equals_unscanned():
  model = maskalign.MaskAlignModel(
      student=ViT.from_variant("micro/4", image_size=16).clone(depth=4), teacher_width=8,
      teacher_depth=4, used_layers=(1, 3), alignment="dynamic", adaptor="linear")
  masks = masking.random_masks(jax.random.key(0), 2, 16, 0.75)
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  rng = np.random.default_rng(1)
  hidden = tuple(jnp.asarray(rng.normal(size=(2, 17, 8)), jnp.float32) for _ in range(5))
  config = ml_collections.ConfigDict({"objective": maskalign.default_config()})
  config.objective.top_k = 2

  def loss_of(m):
    return lambda p: maskalign.loss_fn(m.apply({"params": p}, images, masks),
                                       {"hidden_states": hidden}, masks, {}, config)[0]

  assert_same_loss_and_grads(model, loss_of, random_params(model, images, masks))


def test_mrmae_fusion_scanned_equals_unscanned(make_teacher):
  from tests.test_mrmae import mrmae_config  # pylint: disable=import-outside-toplevel
  config = mrmae_config(fusion_layers=(0, 1))
  config.objective.decoder.update(width=16, depth=1, heads=2, mlp_dim=32)
  model = mrmae.make_model(config, make_teacher(width=12, grid=2))
  model = model.clone(student=model.student.clone(depth=3))  # fuse blocks 0 and 1 of 3
  masks = masking.random_masks(jax.random.key(0), 2, 4, 0.5)
  images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  rng = np.random.default_rng(1)
  teacher_out = {"hidden_states": (jnp.asarray(rng.normal(size=(2, 5, 12)), jnp.float32),),
                 "final": jnp.zeros((2, 5, 12))}

  def loss_of(m):
    return lambda p: mrmae.loss_fn(m.apply({"params": p}, images, masks), teacher_out, masks,
                                   {"image": images}, config)[0]

  grads = assert_same_loss_and_grads(model, loss_of, random_params(model, images, masks))
  # Block 2 is not fused: no gradient reaches it, scanned or not (its row of the stack is 0).
  g = grads["student"]["layers"]["block"]
  assert float(jnp.abs(g["mlp"]["fc2"]["kernel"][2]).max()) == 0.0
  assert float(jnp.abs(g["mlp"]["fc2"]["kernel"][1]).max()) > 0.0


@pytest.mark.parametrize("kw", [
    dict(rel_pos="per_layer", weight_init="beit", layer_scale=0.1),
    dict(rel_pos="shared", remat="full")])
def test_scanned_options_attention_and_layout(kw):
  """Per-layer tables ride in the stack, attention of chosen layers comes out, the stack's
  logical axis is "layers", and unstack/stack are inverse."""
  plain = ViT(patch=4, width=32, depth=3, num_heads=2, mlp_dim=64, image_size=16, **kw)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  boxed = jax.eval_shape(plain.clone(scan=True).init, jax.random.key(1), x)["params"]
  spec = nn.get_partition_spec(boxed)["layers"]["block"]["attn"]["qkv_kernel"]
  assert tuple(spec) == ("layers", "embed", None, "heads", "kv")
  params = random_params(types.SimpleNamespace(init=plain.init), x)
  stacked = scan.stack_blocks(params, 3)
  assert ("rel_pos_bias" in stacked["layers"]) == (kw["rel_pos"] == "per_layer")
  chex.assert_trees_all_equal(scan.unstack_blocks(stacked), params)
  o0, a0 = plain.apply({"params": params}, x, attn_layers=(1, -1))
  o1, a1 = plain.clone(scan=True).apply({"params": stacked}, x, attn_layers=(1, -1))
  np.testing.assert_allclose(o1, o0, rtol=1e-5, atol=1e-5)
  assert sorted(a1["attn"]) == [1, 2]
  np.testing.assert_allclose(a1["attn"][2], a0["attn"][2], atol=1e-6)
  assert len(a1["blocks"]) == 3


@pytest.mark.parametrize("mid_depth", [0, 1, 2])
def test_robust_mae_mid_tokens_scanned_equal_unscanned(mid_depth):
  """Robust MAE's mid-depth tokens under scan: the stack splits at the insertion (two scans,
  `layers` and `layers_{k}`; one when k = 0) and computes what the unscanned blocks compute,
  loss and every gradient."""
  from tests.test_mae import mae_config  # pylint: disable=import-outside-toplevel
  from mim_jax.objectives import mae  # pylint: disable=import-outside-toplevel
  config = mae_config("micro/4", mid_mask_ratio=0.25, mid_mask_depth=mid_depth)  # 4 blocks
  config.data.image_size = 16
  config.student.update(rel_pos="shared", drop_path=0.0)  # the shared table reads positions
  config.objective.decoder.update(width=16, depth=1, heads=2, mlp_dim=32)
  model = mae.make_model(config)
  masks = masking.random_masks(jax.random.key(0), 2, 16, 0.75)
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  params = random_params(model, images, masks)
  starts = (0, mid_depth) if mid_depth else (0,)
  stacked_shapes = nn.unbox(jax.eval_shape(scanned(model).init, jax.random.key(2), images,
                                           masks))["params"]["student"]
  assert vit_lib.stack_starts(stacked_shapes) == starts

  def loss_of(m):
    return lambda p: mae.loss_fn(m.apply({"params": p}, images, masks), None, masks,
                                 {"image": images}, config)[0]

  depth = model.student.depth
  l0, g0 = jax.jit(jax.value_and_grad(loss_of(model)))(params)
  stacked = {**params, "student": scan.stack_blocks(params["student"], depth, starts)}
  l1, g1 = jax.jit(jax.value_and_grad(loss_of(scanned(model))))(stacked)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  assert float(jnp.abs(g0["student"]["mid_mask_token"]).max()) > 0
  chex.assert_trees_all_close({**g1, "student": scan.unstack_blocks(g1["student"])}, g0,
                              rtol=1e-5, atol=1e-7)


def test_split_stacks_restack_and_decay_by_block():
  """`layers` + `layers_2`: unstack/stack are inverse, and layer decay gives each row its
  block's scale, as for the unscanned blocks."""
  params = {f"block{i}": {"k": np.full((4, 5), i, np.float32)} for i in range(3)}
  stacked = scan.stack_blocks(params, 3, (0, 2))
  assert sorted(stacked) == ["layers", "layers_2"]
  assert stacked["layers"]["block"]["k"].shape == (2, 4, 5)
  chex.assert_trees_all_equal(scan.unstack_blocks(stacked), params)
  s = optim.layer_decay_scales({"student": stacked}, 0.5)["student"]
  np.testing.assert_allclose(np.concatenate([s["layers"]["block"]["k"].ravel(),
                                             s["layers_2"]["block"]["k"].ravel()]),
                             [0.5 ** 3, 0.5 ** 2, 0.5])


def test_layer_decay_of_the_stack_matches_the_blocks():
  params = {"student": {"patch_embed": {"kernel": np.zeros((2, 2))},
                        "layers": {"block": {"k": np.zeros((3, 4, 5))}},
                        "norm": {"scale": np.zeros(4)}}}
  s = optim.layer_decay_scales(params, 0.5)["student"]
  assert s["patch_embed"]["kernel"] == 0.5 ** 4 and s["norm"]["scale"] == 1.0
  assert s["layers"]["block"]["k"].shape == (3, 1, 1)
  np.testing.assert_allclose(s["layers"]["block"]["k"].ravel(), [0.5 ** 3, 0.5 ** 2, 0.5])


def test_export_and_init_from_use_the_unstacked_layout(tmp_path):
  """A scanned student's params export as block{i}; a workdir-free timm state dict fills a
  scanned student (stacked at the end)."""
  vit = ViT(patch=4, width=32, depth=2, num_heads=2, mlp_dim=64, image_size=16)
  x = jnp.zeros((1, 16, 16, 3))
  params = random_params(types.SimpleNamespace(init=vit.init), x)
  stacked = scan.stack_blocks(params, 2)
  sd = export.timm_state_dict(stacked, vit.clone(scan=True))
  chex.assert_trees_all_equal(sd, export.timm_state_dict(params, vit))
  path = str(tmp_path / "w.safetensors")
  export._save_safetensors(sd, path)  # pylint: disable=protected-access
  abstract = nn.unbox(jax.eval_shape(vit.clone(scan=True).init, jax.random.key(0), x))["params"]
  loaded = init_from.load_student(path, abstract, vit.clone(scan=True))
  chex.assert_trees_all_close(loaded, jax.tree.map(np.asarray, stacked), atol=1e-6)
