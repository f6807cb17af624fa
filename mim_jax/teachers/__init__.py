"""Frozen semantic teachers (CLIP vision towers, DINO ViTs) ported from transformers checkpoints.

  teacher = mim_jax.teachers.load("clip_b16")             # or a checkpoint directory
  teacher = teacher.for_student(image_size=224, patch_size=16)
  out = teacher.apply(teacher.params, images)             # images: student-normalised [B,H,H,3]
  out["hidden_states"], out["final"], out["attn"], out["pooled"], out.get("embeds")

Several teachers in one run (`teacher.spec="clip_b16,dino_b16"`) are a tuple of Teachers, their
parameters a tuple of trees and their outputs a tuple of dicts (`map_teachers`); one teacher is
the bare Teacher, as before.

Files: checkpoint_io (reading and checking checkpoints), vit and clip (converters; their name
tables and tensor layouts are `mim_jax.convert`'s), network (the Flax ViT both run on), teacher
(the Teacher dataclass), zoo (names and `load`).
"""
from mim_jax.teachers.checkpoint_io import CheckpointError
from mim_jax.teachers.network import Arch, TeacherNet
from mim_jax.data.normalization import STUDENT_MEAN, STUDENT_STD
from mim_jax.teachers.teacher import Teacher, each, map_teachers
from mim_jax.teachers.zoo import KNOWN, load, random_teacher

__all__ = ["Arch", "CheckpointError", "KNOWN", "STUDENT_MEAN", "STUDENT_STD", "Teacher",
           "TeacherNet", "each", "load", "map_teachers", "random_teacher"]
