r"""MR-MAE: ViT-B/16 student mimicking CLIP ViT-B/16 on its 25% visible tokens while its decoder
reconstructs the 75% masked patches, ImageNet-1k, 200 epochs.

  python -m mim_jax.main --config configs/mrmae_b16_clip_b16.py --workdir runs/mrmae
  python -m mim_jax.main --config configs/mrmae_b16_clip_b16.py:runlocal=True --workdir /tmp/x

The paper's MR-MAE row of Table 3 (85.0 at 200 epochs): mimic + reconstruction (0.5 / 0.5),
focused mimicking (visible = the 25% patches the teacher's CLS attends to most) and multi-layer
fusion. The fused blocks are not given by the paper (no public code): we sum the outputs of
blocks 4, 8 and 12 (indices 3, 7, 11). Plain MR-MAE (84.7): --config.mask.kind=random
--config.objective.fusion_layers="()". Recipe (paper + MAE): batch 1024, AdamW(0.9, 0.95), base
lr 1.5e-4, weight decay 0.05, cosine to 0, warmup 20% (the paper's 80 of 400 epochs), no drop
path, RandomResizedCrop(224, 0.2-1) + flip, decoder 512 x 8, target as MAE's.

Several teachers mimicked jointly (Figure 4's "CLIP/DINO (Joint)": one mimic head per teacher,
the mimic terms summed; focused masks from the first teacher's attention unless
--config.teacher.attention_from=1):
  python -m mim_jax.main --config configs/mrmae_b16_clip_b16.py:teacher=clip_b16+dino_b16 ...
  python -m mim_jax.main --config configs/mrmae_b16_clip_b16.py \
      --config.teacher.spec=clip_b16,dino_b16 ...

Arguments: variant=B/16 (student), teacher=clip_b16 (zoo name or checkpoint dir; several joined
by "+", since the argument string itself is comma-separated), runlocal=True (nano student, tiny
decoder, digits, the demo's own teacher, once per listed teacher).
"""
from mim_jax import defaults
from mim_jax import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, runlocal=False, variant="B/16", teacher="clip_b16")
  c = defaults.base("mrmae")
  c.student.variant = arg.variant
  c.student.drop_path = 0.0
  c.teacher.spec = arg.teacher.replace("+", ",")  # teacher.spec separates several by commas
  c.mask.kind, c.mask.ratio = "focused", 0.75
  c.objective.mimic_weight, c.objective.recon_weight = 0.5, 0.5
  c.objective.target_layer, c.objective.target_norm = "last", "ln"
  c.objective.mimic_cls = False
  c.objective.num_fusion = 3
  c.objective.norm_pix = True
  c.objective.global_norm = "global_rgb"
  c.objective.decoder.width, c.objective.decoder.depth = 512, 8
  c.objective.decoder.heads, c.objective.decoder.mlp_dim = 16, 2048
  c.batch_size = 1024
  c.total_epochs = 200.0
  c.warmup_percent = 0.2
  c.optim.base_lr, c.optim.min_lr = 1.5e-4 * 256 / 1024, 0.0  # peak 1.5e-4 at batch 1024
  c.optim.b1, c.optim.b2, c.optim.weight_decay = 0.9, 0.95, 0.05
  c.data.crop_scale = (0.2, 1.0)
  if arg.runlocal:
    defaults.shrink_for_local(c)
  return c
