"""Supervised classification objective, its configs, and layer-wise lr decay."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import classify_digits, finetune_b16
from mim_jax import assembly, optim, sharding, step as step_lib
from mim_jax.models.vit import ViT
from mim_jax.objectives import classify


def obj_config(**kw):
  c = classify.default_config()
  c.update(dict(num_classes=4, **kw))
  return ml_collections.ConfigDict({"objective": c})


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_is_label_smoothed_cross_entropy_over_valid_rows():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4)).astype(np.float32)
  labels = np.array([2, 0, -1], np.int32)  # the last row is padding
  valid = np.array([True, True, False])
  loss, metrics = classify.loss_fn({"logits": jnp.asarray(logits)}, None, None,
                                   {"label": labels, "valid": valid}, obj_config())
  s, c = 0.1, 4
  logp = np_log_softmax(logits.astype(np.float64))
  want = [-((1 - s) * logp[i, labels[i]] + s / c * logp[i].sum()) for i in range(2)]
  assert float(loss) == pytest.approx(np.mean(want), rel=1e-6)
  assert float(metrics["ce"]) == pytest.approx(-np.mean([logp[0, 2], logp[1, 0]]), rel=1e-6)
  correct = [logits[0].argmax() == 2, logits[1].argmax() == 0]
  assert float(metrics["accuracy"]) == pytest.approx(np.mean(correct))


def test_mixed_targets_follow_lambda():
  logits = jnp.zeros((2, 4))
  labels = np.array([1, 3], np.int32)
  loss, _ = classify.loss_fn({"logits": logits, "mix_lam": jnp.float32(0.7)}, None, None,
                             {"label": labels}, obj_config(label_smoothing=0.0))
  assert float(loss) == pytest.approx(np.log(4.0), rel=1e-6)  # uniform logits: any targets
  t = classify.smoothed_targets(jnp.array([1, 3]), 4, 0.0)
  mixed = 0.7 * t + 0.3 * t[::-1]
  np.testing.assert_allclose(mixed[0], [0, 0.7, 0, 0.3], atol=1e-7)


def test_mix_batch():
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  same, lam = classify.mix_batch(jax.random.key(1), x, 0.0, 0.0)
  assert same is x and float(lam) == 1.0
  mixed, lam = classify.mix_batch(jax.random.key(1), x, 0.8, 0.0)
  np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[::-1], atol=1e-6)
  cut, lam = classify.mix_batch(jax.random.key(2), x, 0.0, 1.0)
  from_self = np.all(np.asarray(cut) == np.asarray(x), axis=-1)[0]  # [H, W]
  assert float(lam) == pytest.approx(from_self.mean(), abs=1e-6)


def test_cutmix_box_area():
  inside, lam = classify.cutmix_box(jax.random.key(0), jnp.float32(0.75), 20, 10)
  assert inside.shape == (20, 10)
  assert float(lam) == pytest.approx(1 - float(inside.mean()), abs=1e-6)


def tiny(pool):
  vit = ViT(patch=4, width=32, depth=2, num_heads=2, mlp_dim=64, image_size=16)
  return classify.Classifier(student=vit, num_classes=3, pool=pool)


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_classifier_params_and_pooling(pool):
  model = tiny(pool)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
  params = jax.tree.map(lambda v: v, variables["params"])
  head = classify.head_params(params)
  assert set(head) == ({"head", "fc_norm"} if pool == "avg" else {"head"})
  out = model.apply(variables, x)
  assert out["logits"].shape == (2, 3)
  student_out, aux = model.student.apply({"params": params["student"]}, x)
  feats = classify.pool_features(student_out, aux["blocks"][-1], pool)
  want = student_out[:, 0] if pool == "cls" else aux["blocks"][-1][:, 1:].mean(1)
  np.testing.assert_allclose(feats, want, atol=1e-6)


def test_make_model_refuses_teacher_and_masking():
  config = classify_digits.get_config("runlocal=True")
  config.teacher.spec = "dino_b16"
  with pytest.raises(ValueError, match="without a teacher"):
    classify.make_model(config, None)
  config = classify_digits.get_config("runlocal=True")
  config.mask.kind = "random"
  with pytest.raises(ValueError, match="mask.kind='none'"):
    classify.make_model(config, None)


@pytest.mark.parametrize("module, arg", [(classify_digits, None), (classify_digits, "runlocal=1"),
                                         (finetune_b16, None), (finetune_b16, "runlocal=1"),
                                         (finetune_b16, "recipe=mae")])
def test_configs_build(module, arg):
  config = module.get_config(arg)
  model = classify.make_model(config, None)
  assert model.num_classes == config.objective.num_classes
  total, _ = assembly.durations(config, 1497)
  assert total > 0


def test_finetune_recipe_values():
  c = finetune_b16.get_config()
  assert (c.optim.base_lr, c.optim.layer_decay, c.student.drop_path) == (3e-4, 0.6, 0.2)
  assert (c.objective.label_smoothing, c.objective.pool, c.total_epochs) == (0.1, "avg", 100.0)
  assert finetune_b16.get_config("recipe=mae").optim.base_lr == 5e-4


def test_train_steps_fit_a_fixed_batch():
  config = classify_digits.get_config("runlocal=True")
  config.optim.lr = 3e-3
  config.objective.num_classes = 10
  mesh = sharding.make_mesh({"data": 8})
  setup = assembly.make_setup(config, None, mesh, total_steps=30, warmup_steps=0)
  state = step_lib.init_state(setup, jax.random.key(0))
  images = jax.random.normal(jax.random.key(1), (16, 16, 16, 3))
  batch = {"image": images, "label": jnp.arange(16, dtype=jnp.int32) % 10}
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
  fn = step_lib.jit_train_step(setup, batch)
  losses = []
  for _ in range(12):
    state, metrics = fn(state, None, batch)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.3, losses
  assert "accuracy" in metrics


def test_finetune_step_with_mixup_cutmix_and_layer_decay():
  config = finetune_b16.get_config("runlocal=True")
  mesh = sharding.make_mesh({"data": 8})
  setup = assembly.make_setup(config, None, mesh, total_steps=10, warmup_steps=1)
  state = step_lib.init_state(setup, jax.random.key(0))
  assert set(state.params) == {"student", "head", "fc_norm"}
  batch = {"image": jax.random.normal(jax.random.key(1), (16, 16, 16, 3)),
           "label": jnp.arange(16, dtype=jnp.int32) % 10}
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
  fn = step_lib.jit_train_step(setup, batch)
  before = jax.device_get(state.params)
  for _ in range(2):
    state, metrics = fn(state, None, batch)
  assert np.isfinite(float(metrics["loss"]))
  after = jax.device_get(state.params)
  # Layer decay: the patch embedding (layer 0) moves less than the head (scale 1).
  moved = lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max())
  assert (moved(after["student"]["patch_embed"]["bias"], before["student"]["patch_embed"]["bias"])
          < moved(after["head"]["bias"], before["head"]["bias"]))


# --------------------------------------------------------------------------------------------
# Layer-wise lr decay.
# --------------------------------------------------------------------------------------------
def classifier_tree(depth=3):
  z = jnp.zeros((2,))
  tree = {"student": {"patch_embed": {"kernel": z, "bias": z}, "cls": z, "norm": {"scale": z}},
          "head": {"kernel": z, "bias": z}, "fc_norm": {"scale": z}}
  for i in range(depth):
    tree["student"][f"block{i}"] = {"attn": {"qkv_kernel": z}}
  return tree


def test_layer_decay_scales():
  s = optim.layer_decay_scales(classifier_tree(3), 0.5)
  st = s["student"]
  assert st["patch_embed"]["kernel"] == st["cls"] == 0.5 ** 4  # layer 0 of depth 3
  assert [st[f"block{i}"]["attn"]["qkv_kernel"] for i in range(3)] == [0.5 ** 3, 0.25, 0.5]
  assert s["head"]["kernel"] == s["fc_norm"]["scale"] == st["norm"]["scale"] == 1.0


def optim_config(**kw):
  c = dict(name="adamw", base_lr=1e-3, min_lr=0.0, b1=0.9, b2=0.999, weight_decay=0.05,
           schedule="constant", clip_norm=None, lr=None)
  c.update(kw)
  return ml_collections.ConfigDict(c)


def test_layer_decay_scales_adamw_updates_and_is_off_by_default():
  params = jax.tree.map(lambda z: jnp.ones_like(z) * 0.5, classifier_tree(2))
  grads = jax.tree.map(lambda z: jnp.full_like(z, 0.3), params)
  sched = optax.constant_schedule(1e-2)

  def updates(cfg):
    tx = optim.make_optimizer(cfg, sched)
    return tx.update(grads, tx.init(params), params)[0]

  plain = updates(optim_config())
  reference = optax.adamw(sched, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
                          mask=optim.decay_mask)
  ref = reference.update(grads, reference.init(params), params)[0]
  chex.assert_trees_all_equal(plain, ref)
  decayed = updates(optim_config(layer_decay=0.65))
  scales = optim.layer_decay_scales(params, 0.65)
  jax.tree.map(lambda a, b, s: np.testing.assert_allclose(a, b * s, rtol=1e-6), decayed, plain,
               scales)
