"""Several teachers in one run (MR-MAE's joint mimicking): the spec list, one mimic head per
teacher, the summed mimic loss in the real jitted step, masks from the chosen teacher, a
runlocal run whose checkpoint holds no teacher weight, and one-line refusals."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import mrmae_b16_clip_b16
from mim_jax import aot, assembly, masking, optim, sharding, step, train
from mim_jax import checkpoint as ckpt_lib
from mim_jax import config as config_lib
from mim_jax import objectives
from mim_jax.objectives import mrmae
from mim_jax.teachers import network
from mim_jax.teachers.network import Arch
from mim_jax.data.normalization import STUDENT_MEAN, STUDENT_STD
from mim_jax.teachers.teacher import Teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_spec_lists():
  assert config_lib.teacher_specs(None) == config_lib.teacher_specs("") == ()
  assert config_lib.teacher_specs("clip_b16") == ("clip_b16",)
  assert config_lib.teacher_specs("clip_b16, dino_b16") == ("clip_b16", "dino_b16")
  assert config_lib.teacher_specs(["clip_b16", "dino_b16"]) == ("clip_b16", "dino_b16")
  assert config_lib.teacher_specs(ROOT + ",x") == (ROOT, "x")
  with pytest.raises(ValueError, match="empty entry"):
    config_lib.teacher_specs("clip_b16,,dino_b16")
  # The config file's argument joins them by "+" (its own items are comma-separated).
  c = mrmae_b16_clip_b16.get_config("teacher=clip_b16+dino_b16")
  assert c.teacher.spec == "clip_b16,dino_b16"
  assert objectives.teacher_settings(c) == (("clip_b16", "float32"),
                                                  ("dino_b16", "float32"))
  c.teacher.dtype = "float32,bfloat16"  # one dtype per teacher
  assert [d for _, d in objectives.teacher_settings(c)] == ["float32", "bfloat16"]
  local = mrmae_b16_clip_b16.get_config("runlocal=True,teacher=clip_b16+dino_b16")
  assert local.teacher.spec == "demo,demo"  # runlocal keeps the number of teachers


def joint_config(attention_from=0):
  c = mrmae.default_config()
  c.update(fusion_layers=(0, 1))
  c.decoder.update(width=16, depth=1, heads=2, mlp_dim=32)
  return ml_collections.ConfigDict(dict(
      method="mrmae", seed=0, precision="float32", data=dict(image_size=16),
      student=dict(variant="nano/4", drop_path=0.0, posemb="sincos", rel_pos="none",
                   layer_scale=None, weight_init="mae", remat="none"),
      teacher=dict(spec="a,b", attention_from=attention_from),
      mask=dict(kind="focused", ratio=0.75), objective=c,
      optim=dict(name="adamw", lr=2e-3, min_lr=0.0, b1=0.9, b2=0.95, eps=1e-8,
                 weight_decay=0.05, schedule="constant", clip_norm=None)))


def setup_for(config, teacher):
  schedule = optim.make_schedule(config.optim, total_steps=8, warmup_steps=0, global_batch=8)
  return step.Setup(config=config, model=mrmae.make_model(config, teacher), objective=mrmae,
                    tx=optim.make_optimizer(config.optim, schedule), schedule=schedule,
                    mesh=sharding.make_mesh({"data": -1}), teacher=teacher)


def random_like(tree, seed, scale=0.3):
  """Random arrays of a tree's shapes (no init to compile: slow for RNG code on CPU)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), tree)


def vit_teacher(width, depth, patch, seed):
  arch = Arch(patch=patch, grid=4, width=width, depth=depth, num_heads=2, mlp_dim=2 * width,
              act="gelu", ln_eps=1e-6)
  return Teacher(name=f"t{seed}", kind="vit", arch=arch, mean=STUDENT_MEAN, std=STUDENT_STD,
                 params=random_like(network.param_shapes(arch), seed, 0.5))


def test_joint_step_is_the_sum_of_each_teachers_mimic_term():
  """The real jitted step with two teachers (widths 16 and 24, the second on a patch-8 grid
  run at 32 px; focused masks from the second's attention) logs mimic = term_0 + term_1, and
  each term equals the single-teacher loss of that teacher with the same head and masks."""
  teachers_ = (vit_teacher(16, 2, 4, seed=1), vit_teacher(24, 3, 8, seed=2))
  assert [t.image_size for t in teachers_] == [16, 32]
  config = joint_config(attention_from=1)
  setup = setup_for(config, teachers_)
  abstract, _ = step.state_shardings(setup)
  params = random_like(abstract.params, seed=3)
  assert {k: v["kernel"].shape for k, v in params.items() if k.startswith("mimic")} == {
      "mimic_head": (32, 16), "mimic_head_1": (32, 24)}
  state = step.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=setup.tx.init(params))
  pixels = jax.random.uniform(jax.random.key(1), (8, 16, 16, 3))
  batch = {"image": (pixels - jnp.asarray(STUDENT_MEAN)) / jnp.asarray(STUDENT_STD)}
  t_params = assembly.teacher_params(teachers_)
  host_params = jax.device_get(params)  # the step donates the state
  _, metrics = step.jit_train_step(setup, batch)(state, t_params, batch)

  @jax.jit
  def separately(params, t_params):
    """Each teacher alone through the single-teacher model and loss; the step's masks (its
    rng, teacher 1's attention) and, for contrast, those of teacher 0's attention."""
    rng_mask = jax.random.split(jax.random.fold_in(jax.random.key(0), 0))[0]
    outs = [t.apply(p, batch["image"], attn_layers=(t.depth - 1,))
            for t, p in zip(teachers_, t_params)]
    focus = [masking.make_masks("focused", rng_mask, batch=8, num_patches=16, ratio=0.75,
                                importance=masking.cls_attention_importance(
                                    o["attn"][t.depth - 1])) for t, o in zip(teachers_, outs)]
    terms = []
    for k, (t, out) in enumerate(zip(teachers_, outs)):
      p = {"student": params["student"], "decoder": params["decoder"],
           "mimic_head": params[mrmae.head_name(k)]}  # one teacher: one head, `mimic_head`
      pred = mrmae.make_model(config, t).apply({"params": p}, batch["image"], focus[1])
      _, m = mrmae.loss_fn(pred, out, focus[1], batch, config)
      terms.append(m["loss/mimic"])
    return terms, m["loss/recon"], [f.ids_keep for f in focus]

  terms, recon, ids_keep = jax.device_get(separately(host_params, t_params))
  assert not np.array_equal(ids_keep[0], ids_keep[1])  # the choice of teacher matters
  for k in (0, 1):
    assert float(metrics[f"loss/mimic_{k}"]) == pytest.approx(float(terms[k]), rel=1e-5)
  assert terms[0] != pytest.approx(terms[1], rel=1e-3)  # distinct teachers, distinct terms
  assert float(metrics["loss/mimic"]) == pytest.approx(float(sum(terms)), rel=1e-5)
  assert float(metrics["loss"]) == pytest.approx(0.5 * float(sum(terms)) + 0.5 * float(recon),
                                                 rel=1e-5)


def saved_arrays(workdir):
  """{path in the saved state tree: shape} of the latest checkpoint, read from its metadata."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  ckpt = os.path.join(workdir, "checkpoints")
  latest = max(int(s) for s in os.listdir(ckpt) if s.isdigit())
  meta = ocp.StandardCheckpointer().metadata(os.path.join(ckpt, str(latest), "state"))
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  return {jax.tree_util.keystr(p): tuple(v.shape)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
def test_two_teacher_runlocal_run_trains_and_saves_no_teacher_weight(
    tmp_path, tiny_clip_teacher_dir, tiny_dino_l8_teacher_dir):
  """configs/mrmae_b16_clip_b16.py:runlocal=True with a CLIP (16 px) and a patch-8 ViT teacher
  (run at 32 px): the loss falls, and the checkpoint holds the student, decoder, both mimic
  heads and their AdamW moments, nothing of either teacher."""
  c = mrmae_b16_clip_b16.get_config("runlocal=True")
  c.teacher.spec = f"{tiny_clip_teacher_dir},{tiny_dino_l8_teacher_dir}"
  c.total_steps, c.checkpoint_every, c.optim.lr = 16, 16, 2e-3
  workdir = str(tmp_path / "joint")
  result = train.train_and_evaluate(c, workdir)
  assert [t.image_size for t in result.setup.teacher] == [16, 32]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  loss = [r["loss"] for r in rows]
  assert np.mean(loss[-4:]) < 0.9 * np.mean(loss[:4]), loss
  assert rows[-1]["loss/mimic"] == pytest.approx(rows[-1]["loss/mimic_0"]
                                                 + rows[-1]["loss/mimic_1"], rel=1e-5)

  saved = saved_arrays(workdir)
  params = {p[len("['params']"):]: shape for p, shape in saved.items()
            if p.startswith("['params']")}
  assert {p.split("]")[0] + "]" for p in params} == {
      "['student']", "['decoder']", "['mimic_head']", "['mimic_head_1']"}
  assert params == {jax.tree_util.keystr(p): tuple(x.shape)  # exactly the trained params
                    for p, x in jax.tree_util.tree_leaves_with_path(result.state.params)}
  state_leaves = jax.tree.leaves(result.state)  # step + params + two AdamW moments
  assert len(saved) == len(state_leaves)
  assert sum(int(np.prod(s)) for s in saved.values()) == sum(int(np.size(x))
                                                             for x in state_leaves)


def test_a_list_for_a_single_teacher_method_is_one_error_line(tmp_path):
  workdir = tmp_path / "w"
  r = subprocess.run(
      [sys.executable, "-m", "mim_jax.main", "--config",
       "configs/maskalign_b16_clip_b16.py:runlocal=True", "--workdir", str(workdir),
       "--config.teacher.spec=clip_b16,dino_b16"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode != 0 and last.startswith("error:"), r.stderr[-2000:]
  assert "lists 2 teachers" in last and "'maskalign' takes one" in last and "mrmae" in last
  assert not workdir.exists()


@pytest.mark.parametrize("overrides,message", [
    (dict(spec="clip_b16,,dino_b16"), "empty entry"),
    (dict(attention_from=2), "attention_from=2 is not the index"),
    (dict(dtype="float32,bfloat16,float32"), "3 dtypes for 2 teachers"),
])
def test_bad_teacher_lists_are_refused_before_anything_is_written(overrides, message):
  from mim_jax import validate  # pylint: disable=import-outside-toplevel
  c = mrmae_b16_clip_b16.get_config("teacher=clip_b16+dino_b16")
  c.teacher.update(overrides)
  with pytest.raises(ValueError, match=message):
    validate.check_teachers(c)


def test_aot_compiles_both_teachers(tiny_clip_teacher_dir, tiny_dino_l8_teacher_dir):
  """`mim_jax.aot` with two teachers: both teachers' weights are arguments of the compiled
  step (their bytes per device reported) and both forwards are in it."""
  c = mrmae_b16_clip_b16.get_config("runlocal=True")
  c.teacher.spec = f"{tiny_clip_teacher_dir},{tiny_dino_l8_teacher_dir}"
  devices = aot.cpu_devices(8)
  joint = aot.compile_step(c, devices)
  teachers_ = joint.setup.teacher
  assert [t.image_size for t in teachers_] == [16, 32]
  each = [aot.shard_bytes(ckpt_lib.abstract_with_shardings(
      t.params, assembly.teacher_shardings(t, joint.setup.mesh))) for t in teachers_]
  assert min(each) > 0 and joint.teacher_bytes == sum(each)
  abstract, shardings = step.state_shardings(joint.setup)
  state = aot.shard_bytes(ckpt_lib.abstract_with_shardings(abstract, shardings))
  assert joint.memory.argument >= state + 0.99 * sum(each)
  # The second teacher runs on its own 32 px input (the student's images are 16 px).
  assert "32,32,3]" in joint.compiled.as_text()
  text, _ = aot.report(joint, devices, hbm=1.0)
  assert f"teachers {tiny_clip_teacher_dir} (float32, grid 4, 16 px), " in text
  assert "of which teacher weights" in text
