"""The one train step: mesh independence, sharding by rules, frozen teacher, bf16 path."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import maskalign_b16_clip_b16
from mim_jax import assembly, sharding, step as step_lib


def make(teacher_dir, mesh_spec, **overrides):
  config = maskalign_b16_clip_b16.get_config("runlocal=True")
  config.teacher.spec = teacher_dir
  config.batch_size = 8
  config.optim.lr = 1e-3
  for k, v in overrides.items():
    config[k] = v
  teacher = assembly.load_teacher(config)
  mesh = sharding.make_mesh(mesh_spec)
  setup = assembly.make_setup(config, teacher, mesh, total_steps=20, warmup_steps=0)
  state = step_lib.init_state(setup, jax.random.key(0))
  t_sh = assembly.teacher_shardings(teacher, mesh)
  t_params = jax.device_put(teacher.params, t_sh)
  images = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
  batch = {"image": jax.device_put(images, sharding.batch_sharding(mesh, 4))}
  return setup, state, t_params, t_sh, batch


def run_steps(teacher_dir, mesh_spec, n=3, **overrides):
  setup, state, t_params, t_sh, batch = make(teacher_dir, mesh_spec, **overrides)
  fn = step_lib.jit_train_step(setup, batch, t_sh)
  losses = []
  for _ in range(n):
    state, metrics = fn(state, t_params, batch)
    losses.append(float(metrics["loss"]))
  return setup, state, losses, metrics, fn


def test_same_step_on_two_meshes(tiny_vit_teacher_dir):
  _, s1, l1, m1, _ = run_steps(tiny_vit_teacher_dir, {"data": 8})
  _, s2, l2, m2, _ = run_steps(tiny_vit_teacher_dir, {"data": 2, "fsdp": 4})
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  flat1 = jax.tree_util.tree_leaves_with_path(s1.params)
  for (path, a), b in zip(flat1, jax.tree.leaves(s2.params)):
    a, b = np.asarray(a), np.asarray(b)
    if path[-1].key == "qkv_bias":
      # The key bias has an exactly-zero gradient (softmax ignores a per-query constant), so
      # Adam turns float32 rounding noise into steps of up to lr: compare it to that bound and
      # the query/value biases tightly.
      assert np.abs(a[1] - b[1]).max() <= 2 * 3 * 1e-3
      a, b = a[[0, 2]], b[[0, 2]]
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
  assert int(s1.step) == int(s2.step) == 3


def test_params_sharded_as_the_rules_say(tiny_vit_teacher_dir):
  setup, state, *_ = make(tiny_vit_teacher_dir, {"data": 2, "fsdp": 4})
  qkv = state.params["student"]["block0"]["attn"]["qkv_kernel"]  # [embed, 3, heads, kv]
  assert qkv.sharding.spec == P("fsdp", None, "model", None)
  assert qkv.addressable_shards[0].data.shape == (32 // 4, 3, 2, 16)
  fc2 = state.params["student"]["block0"]["mlp"]["fc2"]["kernel"]  # [mlp, embed]
  assert fc2.sharding.spec == P("model", "fsdp")
  moments = [x for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
             if "['student']['block0']['attn']['qkv_kernel']" in jax.tree_util.keystr(p)]
  assert len(moments) == 2  # Adam's mu and nu follow their parameter's sharding
  assert all(m.sharding == qkv.sharding for m in moments)
  # the patch kernel's 3-channel axis is not split; its embed axis is
  pk = state.params["student"]["patch_embed"]["kernel"]
  assert pk.sharding.spec == P(None, None, None, "fsdp")


def test_teacher_is_frozen_and_not_in_the_state(tiny_vit_teacher_dir):
  setup, state, t_params, t_sh, batch = make(tiny_vit_teacher_dir, {"data": 8})
  assert set(state.params) == {"student", "alignment", "adaptor0", "adaptor1"}
  names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)}
  assert not any("teacher" in n for n in names)
  before = jax.tree.map(np.asarray, t_params)
  fn = step_lib.jit_train_step(setup, batch, t_sh)
  fn(state, t_params, batch)
  chex.assert_trees_all_equal(before, jax.device_get(t_params))
  grads = jax.grad(lambda tp: step_lib.teacher_forward(setup, tp, batch["image"])
                   ["hidden_states"][-1].sum())(t_params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_step_metrics(tiny_vit_teacher_dir):
  setup, state, t_params, t_sh, batch = make(tiny_vit_teacher_dir, {"data": 8})
  fn = step_lib.jit_train_step(setup, batch, t_sh)
  before = jax.device_get(state.params)
  state, metrics = fn(state, t_params, batch)
  for key in ("grad_norm", "param_norm", "update_norm", "lr", "loss/layer1"):
    assert np.isfinite(float(metrics[key]))
  # update_norm: the norm of what the step changed in the parameters; param_norm: of the new ones.
  after = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(state.params))]
  change = [a - np.asarray(b, np.float64) for a, b in zip(after, jax.tree.leaves(before))]
  want = np.sqrt(sum(np.sum(d * d) for d in change))
  assert want > 0
  assert float(metrics["update_norm"]) == pytest.approx(want, rel=1e-5)
  assert float(metrics["param_norm"]) == pytest.approx(
      np.sqrt(sum(np.sum(a * a) for a in after)), rel=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_vit_teacher_dir", "tiny_clip_teacher_dir",
                                     "tiny_clip_model_dir"])
def test_maskalign_trains_with_each_teacher_kind(fixture, request):
  """DINO-style ViTModel, CLIPVisionModel and a full CLIPModel checkpoint, through load()."""
  teacher_dir = request.getfixturevalue(fixture)
  setup, _, losses, _, fn = run_steps(teacher_dir, {"data": 8}, n=10)
  assert setup.teacher.kind == ("vit" if "vit" in fixture else "clip")
  assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
  assert fn.jitted._cache_size() == 1


def test_bfloat16_matmuls_track_float32(tiny_vit_teacher_dir):
  *_, l32, _, _ = run_steps(tiny_vit_teacher_dir, {"data": 8}, n=3)
  *_, l16, _, _ = run_steps(tiny_vit_teacher_dir, {"data": 8}, n=3, precision="bfloat16")
  np.testing.assert_allclose(l16, l32, rtol=2e-2)
  assert l16 != l32


def test_grid_mismatch(tiny_dino_l8_teacher_dir):
  config = maskalign_b16_clip_b16.get_config("runlocal=True")
  config.teacher.spec = tiny_dino_l8_teacher_dir  # patch 8 at 32 px: a 4x4 grid
  config.data.image_size = 24  # student nano/4: a 6x6 grid
  teacher = assembly.load_teacher(config)  # resolved: the teacher runs at 6 * 8 = 48 px
  assert (teacher.grid, teacher.image_size) == (6, 48)
  config.teacher.resize_to_student = False
  with pytest.raises(ValueError, match=r"teacher grid 4x4 vs student grid 6x6"):
    assembly.load_teacher(config)
  config.teacher.resize_to_student = True
  config.data.image_size = 18  # not a multiple of the student's patch
  with pytest.raises(ValueError, match=r"teacher grid 4x4 vs student grid"):
    assembly.load_teacher(config)


def test_accumulated_micro_batches_give_the_one_batch_update(tiny_vit_teacher_dir):
  """optim.accumulate_steps=4 on a (2, 4) mesh: the same loss and parameters as one batch of the
  same 32 examples, within float noise. MaskDistill with its masks in the batch (a fixed number
  per image) and drop path off, so nothing random depends on the micro-batching."""
  from configs import maskdistill_b16_clip_b16  # pylint: disable=import-outside-toplevel
  results = {}
  for k in (1, 4):
    config = maskdistill_b16_clip_b16.get_config("runlocal=True")
    config.teacher.spec = tiny_vit_teacher_dir
    config.batch_size, config.optim.lr, config.student.drop_path = 32, 1e-3, 0.0
    config.optim.accumulate_steps = k
    teacher = assembly.load_teacher(config)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    setup = assembly.make_setup(config, teacher, mesh, total_steps=20, warmup_steps=0)
    state = step_lib.init_state(setup, jax.random.key(0))
    t_sh = assembly.teacher_shardings(teacher, mesh)
    rng = np.random.default_rng(0)
    n = setup.num_patches
    masks = np.zeros((32, n), np.uint8)
    for row in masks:
      row[rng.permutation(n)[: n // 2]] = 1
    images = rng.normal(size=(32, config.data.image_size, config.data.image_size, 3))
    batch = {"image": jax.device_put(images.astype(np.float32), sharding.batch_sharding(mesh, 4)),
             "mask": jax.device_put(masks, sharding.batch_sharding(mesh, 2))}
    fn = step_lib.jit_train_step(setup, batch, t_sh)
    results[k] = jax.device_get(fn(state, jax.device_put(teacher.params, t_sh), batch))
  (s1, m1), (s4, m4) = results[1], results[4]
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
  chex.assert_trees_all_close(s4.params, s1.params, rtol=1e-4, atol=1e-6)
