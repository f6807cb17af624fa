"""The fields every experiment config has, with the defaults of the MaskAlign recipe.

Experiment files (configs/) call `base(method)` and override what their method needs; keeping
every key here is what lets a locked config reject a misspelt `--config.x=y`, and what lets later
code read an old run's config.json (`mim_jax.saved_config`: keys added since get these
defaults). `ALLOWED`, below `base`, declares what each key may hold (`mim_jax.validate` checks
it, with the objectives' and the data pipeline's declarations, before a run writes anything).
"""
from __future__ import annotations

import ml_collections

from mim_jax import config as config_lib
from mim_jax import masking
from mim_jax import objectives
from mim_jax import optim
from mim_jax.allowed import (Allowed, at_most, checked_by, flag, free, integer, listed, number,
                             one_of)
from mim_jax.data import block_mask
from mim_jax.data import input_pipeline
from mim_jax.evaluation import features
from mim_jax.models import layers
from mim_jax.models import platforms
from mim_jax.models import vit
from mim_jax.objectives import common as objective_common
from mim_jax.objectives import evaluators


def base(method: str) -> ml_collections.ConfigDict:
  """The common keys of `method`'s configs: only those its runs read (a method without a
  teacher has no teacher settings, one that never masks no mask ratio, one evaluated by top-1
  no kNN settings, each optimizer its own)."""
  objective = objectives.get(method)
  with_teacher = getattr(objective, "TEACHER", True)
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0
  # matmul inputs (parameters stay float32): "float32" | "bfloat16" | "auto", which is bfloat16
  # on TPU and GPU and float32 on CPU, for the devices the step runs on (or is compiled for:
  # mim_jax.aot); mim_jax/models/platforms.py resolves it. The teacher follows (teacher.dtype).
  c.precision = "auto"
  # The attention kernel (mim_jax/models/platforms.py): "auto" (the fastest measured for the
  # platform: cuDNN's fused attention on a GPU in bf16, else XLA's) | "xla" (explicit softmax
  # attention, every platform) | "cudnn" (GPU and bf16 only; refused elsewhere).
  c.attention = "auto"
  # bf16 matmuls copy their operands into the layout XLA's fast CPU kernel wants, each block's
  # residual cotangent is materialised once (XLA's CPU fusion would recompute it in every
  # consumer) and the qkv projection runs in its natural layout; applies only when the step is
  # compiled for ONE CPU device (never for TPU/GPU or a sharded mesh).
  c.cpu_matmul_layout = True

  # The student's options (mim_jax/models/vit.py): MAE's by default; MaskDistill / FD set BEiT's
  # (rel_pos "shared", layer_scale, weight_init "beit"), their fine-tuning rel_pos "per_layer".
  # remat: what each block keeps for the backward pass (layers.REMAT_POLICIES): "none" |
  # "full" | "dots" | "dots_no_batch" | "offload" (TPU/GPU); the memory lever for big students.
  # scan: the blocks under nn.scan (compile time flat in depth; parameters stacked on a leading
  # "layers" axis, converted by init_from and export; robust MAE's mid-depth tokens split the
  # stack in two at mid_mask_depth: "layers" and "layers_{depth}").
  # A hybrid variant ("ConvB/16", mim_jax/models/convvit.py) reads variant, drop_path, posemb,
  # remat and stage_skips (its pretraining-only stage-1/2 skips; True for MR-MCMAE pretraining).
  c.student = ml_collections.ConfigDict(dict(variant="B/16", drop_path=0.1, posemb="sincos",
                                             rel_pos="none", weight_init="mae", remat="none",
                                             scan=False, stage_skips=False))
  c.student.layer_scale = ml_collections.FieldReference(None, field_type=float)
  # A student started from a CLIP vision tower (init_from) has CLIP's MLP activation
  # ("quick_gelu"), LayerNorm epsilon (1e-5) and LayerNorm before the first block (pre_norm).
  c.student.act, c.student.ln_eps, c.student.pre_norm = "gelu", 1e-6, False
  # The student's (and its pixel decoder's) residual stream and activations between ops
  # (mim_jax/models/layers.py):
  # "auto" (the matmuls' dtype: bfloat16 on TPU and GPU, float32 on CPU) | "float32" |
  # "bfloat16" (half the HBM traffic of a TPU step's activations and attention scores;
  # LayerNorm and softmax statistics, the final norm, heads and losses stay float32).
  c.student.stream_dtype = "auto"
  # spec: a transformers checkpoint directory or a zoo name (clip_b16, clip_l14, dino_b16);
  # None for methods without a teacher. Several teachers (MR-MAE's joint mimicking only):
  # comma-separated, "clip_b16,dino_b16" (the field stays a str, so one spec and every override
  # keep their meaning). resize_to_student: a teacher whose token grid differs from the
  # student's runs on resized images with a resized position embedding (CLIP-L/14 at 196 px
  # under a /16 student at 224), each teacher at its own size; False refuses any mismatch.
  # dtype: the teachers' matmul inputs and stored weights, "float32" | "bfloat16", one for all
  # or one per teacher ("float32,bfloat16"); None follows `precision`. attention_from: of
  # several teachers, the index of the one whose attention drives attentive / focused masks.
  # A teacher-free method keeps `spec` (None; its model refuses one).
  c.teacher = ml_collections.ConfigDict()
  c.teacher.spec = ml_collections.FieldReference("clip_b16" if with_teacher else None,
                                                 field_type=str)
  if with_teacher:
    c.teacher.resize_to_student, c.teacher.attention_from = True, 0
    c.teacher.dtype = ml_collections.FieldReference(None, field_type=str)
  # A method that never masks keeps `kind` ("none"; its model refuses another).
  c.mask = (ml_collections.ConfigDict(dict(kind="attentive", ratio=0.7))
            if getattr(objective, "MASKS", True) else ml_collections.ConfigDict(dict(kind="none")))
  c.objective = objective.default_config()

  c.data = input_pipeline.default_config()
  c.data.name = "imagenet2012"
  c.data.image_size = 224

  c.batch_size = 1024
  # Durations: set exactly one of *_steps / *_epochs (/ *_examples / *_percent for warmup).
  c.total_steps = ml_collections.FieldReference(None, field_type=int)
  c.total_epochs = ml_collections.FieldReference(200.0, field_type=float)
  c.warmup_steps = ml_collections.FieldReference(None, field_type=int)
  c.warmup_epochs = ml_collections.FieldReference(None, field_type=float)
  c.warmup_percent = ml_collections.FieldReference(0.1, field_type=float)

  # The peak learning rate: base_lr * batch_size / 256, or lr as it is when set (a config that
  # sets lr sets base_lr None; `--config.optim.base_lr` is refused while lr is set).
  c.optim = ml_collections.ConfigDict(dict(min_lr=1e-5, weight_decay=0.05, schedule="cosine"))
  c.optim.base_lr = ml_collections.FieldReference(1.5e-4, field_type=float)
  c.optim.lr = ml_collections.FieldReference(None, field_type=float)
  use_optimizer(c, "lars" if method == "linear_probe" else "adamw")
  c.optim.clip_norm = ml_collections.FieldReference(None, field_type=float)
  # Gradients as the mean over this many micro-batches of batch_size / accumulate_steps, one at a
  # time inside the step (the same update, with the activations of one micro-batch).
  c.optim.accumulate_steps = 1

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  # None: JAX's choice (on for v5e only); True lets a mesh axis span parts of several physical
  # axes of a TPU slice, for shapes that do not fit otherwise (mim_jax/sharding.py).
  c.mesh.allow_split_physical_axes = ml_collections.FieldReference(None, field_type=bool)

  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  # A jax.profiler trace of steps [first_step, first_step + num_steps) in <workdir>/profile
  # (TensorBoard's profile plugin; also a .trace.json.gz for Perfetto); num_steps=0: off.
  c.profile = ml_collections.ConfigDict(dict(first_step=10, num_steps=0))
  c.async_checkpoint = True
  # kNN during training; pool: the feature of an image, "cls" token | "mean" of the patch tokens
  c.eval = ml_collections.ConfigDict(dict(every=0, batch_size=256, pool="cls"))
  if objective.evaluate is evaluators.student_knn:  # not a classifier's top-1
    c.eval.update(knn_k=20, knn_temperature=0.07)
  if with_teacher:  # its one use: the demo teacher's runlocal checkpoint for teacher.spec "demo"
    c.runlocal = False
  return c


# Each optimizer's own settings (mim_jax/optim.py), with their defaults.
# mu_dtype: AdamW's first moment stored in "float32" | "bfloat16" (half its memory and its bytes
# read and written each step; the second moment and the parameters stay float32).
OPTIMIZER_KEYS = {"adamw": dict(b1=0.9, b2=0.95, eps=1e-8, mu_dtype="float32"),
                  "lars": dict(momentum=0.9),
                  "sgd": dict(momentum=0.9)}


def use_optimizer(c: ml_collections.ConfigDict, name: str) -> None:
  """`optim.name` = `name`, with that optimizer's settings (at their defaults) in place of
  another's."""
  for other in OPTIMIZER_KEYS.values():
    for key in other:
      if key in c.optim:
        del c.optim[key]
  c.optim.name = name
  c.optim.update(OPTIMIZER_KEYS[name])


_COUNT = dict(ge=1)  # sizes, counts
_EVERY = dict(ge=0, note="0: off")  # periodic work
_FRACTION = dict(ge=0, le=1)

# What each key of `base` (and the few keys some configs add) may hold: the block's own keys
# (objective, data, augment) are declared beside their defaults, in their modules.
ALLOWED: dict[str, Allowed] = {
    "method": one_of(*objectives.METHODS),
    "seed": integer(ge=0),
    "precision": one_of(*objective_common.PRECISIONS, note="auto: bfloat16 on TPU and GPU, "
                        "float32 on CPU"),
    "attention": one_of(*platforms.ATTENTIONS, note="cudnn: GPU and bf16 only"),
    "cpu_matmul_layout": flag(),
    "student.variant": checked_by(config_lib.decode_variant, "a ViT variant '<size>/<patch>' "
                                  f"(sizes {', '.join(config_lib.SIZES)}) or a hybrid "
                                  f"'{config_lib.CONV_PREFIX}<size>/{config_lib.CONV_PATCH}'",
                                  "Q/16"),
    "student.drop_path": number(ge=0, lt=1),
    "student.posemb": one_of(*vit.POSEMBS),
    "student.rel_pos": one_of(*vit.REL_POS),
    "student.weight_init": one_of(*vit.INITS),
    "student.remat": one_of("none", *layers.REMAT_POLICIES),
    "student.scan": flag(),
    "student.stream_dtype": one_of(*objective_common.STREAM_DTYPES),
    "student.stage_skips": flag(),
    "student.layer_scale": number(gt=0, optional=True),
    "student.act": one_of(*layers.ACTIVATIONS),
    "student.ln_eps": number(gt=0),
    "student.pre_norm": flag(),
    "teacher.spec": free("a checkpoint directory or zoo name, read before the run writes"),
    "teacher.resize_to_student": flag(),
    "teacher.attention_from": integer(ge=0),
    "teacher.dtype": listed(*objective_common.DTYPES, optional=True,
                            note="one per teacher; None follows precision"),
    "mask.kind": one_of(*masking.KINDS),
    "mask.ratio": number(**_FRACTION).bound(block_mask.leaves_a_patch),
    "batch_size": integer(**_COUNT),
    "total_steps": integer(**_COUNT, optional=True),
    "total_epochs": number(gt=0, optional=True),
    "warmup_steps": integer(ge=0, optional=True).bound(at_most("total_steps")),
    "warmup_epochs": number(ge=0, optional=True).bound(at_most("total_epochs")),
    "warmup_percent": number(**_FRACTION, optional=True),
    "optim.name": one_of(*optim.OPTIMIZERS),
    "optim.base_lr": number(ge=0, optional=True),
    "optim.lr": number(ge=0, optional=True),
    "optim.min_lr": number(ge=0),
    "optim.b1": number(ge=0, lt=1),
    "optim.b2": number(ge=0, lt=1),
    "optim.eps": number(gt=0),
    "optim.weight_decay": number(ge=0),
    "optim.schedule": one_of(*optim.SCHEDULES),
    "optim.clip_norm": number(gt=0, optional=True),
    "optim.accumulate_steps": integer(**_COUNT),
    "optim.mu_dtype": one_of(*objective_common.DTYPES, note="AdamW only"),
    "optim.layer_decay": number(gt=0, le=1, optional=True),  # fine-tuning configs
    "optim.momentum": number(ge=0, lt=1),  # LARS / SGD (the linear probe)
    "optim.frozen": free("parameter groups; the linear probe checks its own"),
    "mesh.data": integer(**_COUNT, also=(-1,), note="-1: the devices left"),
    "mesh.fsdp": integer(**_COUNT, also=(-1,), note="-1: the devices left"),
    "mesh.model": integer(**_COUNT, also=(-1,), note="-1: the devices left"),
    "mesh.allow_split_physical_axes": flag(optional=True),
    "log_every": integer(**_EVERY),
    "checkpoint_every": integer(**_EVERY),
    "keep_checkpoints": integer(**_COUNT),
    "profile.first_step": integer(ge=0),
    "profile.num_steps": integer(ge=0),
    "async_checkpoint": flag(),
    "eval.every": integer(**_EVERY),
    "eval.knn_k": integer(**_COUNT),
    "eval.knn_temperature": number(gt=0),
    "eval.batch_size": integer(**_COUNT),
    "eval.pool": one_of(*features.POOLS),
    "runlocal": flag(),
    "init_from": free("a workdir, checkpoint or file, read before the run writes"),
}


def digits_data(c: ml_collections.ConfigDict, image_size: int,
                crop_scale: tuple[float, float] = (0.2, 1.0)) -> None:
  """The locally built digits dataset (no download): 1,497 train / 300 test images."""
  c.data.name = "mim_digits"
  c.data.image_size = image_size
  c.data.split, c.data.eval_split = "train", "test"
  c.data.crop_scale = crop_scale
  c.data.flip = False  # a flipped digit is another symbol
  c.data.cache = True
  c.data.shuffle_buffer = 2_000


def shrink_for_local(c: ml_collections.ConfigDict) -> None:
  """`runlocal`: the same config at a size that runs in seconds on a laptop CPU."""
  if "runlocal" in c:
    c.runlocal = True
  c.student.variant = "nano/4"
  digits_data(c, image_size=16, crop_scale=c.data.crop_scale)
  c.batch_size = 16
  c.total_steps = 4
  c.total_epochs = None
  c.warmup_percent = c.warmup_epochs = None
  c.warmup_steps = 1
  if c.teacher.spec:  # the demo's own teacher, trained on first use (one per listed teacher)
    c.teacher.spec = ",".join(["demo"] * len(config_lib.teacher_specs(c.teacher.spec)))
  if "decoder" in c.objective:  # MAE-style decoders
    c.objective.decoder.update(width=32, depth=2, heads=2, mlp_dim=64)
  c.log_every = 1
  c.checkpoint_every = 2
  c.eval.every = 0
