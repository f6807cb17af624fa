"""`Teacher`: a frozen teacher network, its normalisation, its input size, and its parameters.

The dataclass is hashable and compares by everything except `params`, so it can be a static
argument of (or closed over by) a jitted function while the parameters travel as an ordinary
argument: `teacher.apply(params, images)` is a pure function of `params` and `images`.
(Two teachers that differ only in their params compare equal: never bake `teacher.params` into a
jitted function as a constant.)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.convert import resize
from mim_jax.data.normalization import CLIP_MEAN, CLIP_STD, STUDENT_MEAN, STUDENT_STD
from mim_jax.teachers.network import Arch, TeacherNet, param_shapes

# Default normalisation of each kind when the checkpoint has no preprocessor_config.json.
DEFAULT_MEAN_STD = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "vit": (STUDENT_MEAN, STUDENT_STD),
}

Size = Union[int, Sequence[int]]


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen teacher. `kind` is "vit" (transformers ViTModel, e.g. DINO) or "clip"."""
  name: str
  kind: str
  arch: Arch
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  dtype: str = "float32"
  params: Any = dataclasses.field(default=None, compare=False, repr=False)

  # ---- shape ---------------------------------------------------------------------------------
  @property
  def patch_size(self) -> int:
    return self.arch.patch

  @property
  def image_size(self) -> int:
    """Side of the square images the network runs on (inputs are resized to it)."""
    return self.arch.image_size

  @property
  def grid(self) -> int:
    return self.arch.grid

  @property
  def width(self) -> int:
    return self.arch.width

  @property
  def depth(self) -> int:
    return self.arch.depth

  @property
  def num_heads(self) -> int:
    return self.arch.num_heads

  @property
  def projection_dim(self) -> int:
    """Width of `embeds` (CLIP's visual projection), 0 when the checkpoint has none."""
    return self.arch.proj_dim

  # ---- forward -------------------------------------------------------------------------------
  def preprocess(self, images: jax.Array) -> jax.Array:
    """Student-normalised [B, H, H, 3] -> teacher-normalised [B, S, S, 3], S = image_size.

    Pixels are x * student_std + student_mean; the teacher wants (pixels - mean) / std: one
    affine map per channel. Resizing is bicubic (torch's kernel, see `resize`); it commutes with
    the affine map because its weights sum to one.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
      raise ValueError(f"Teacher {self.name!r} expects square [B, H, H, 3] images, got "
                       f"{images.shape}.")
    s_mean, s_std = np.asarray(STUDENT_MEAN), np.asarray(STUDENT_STD)
    t_mean, t_std = np.asarray(self.mean), np.asarray(self.std)
    scale = jnp.asarray(s_std / t_std, jnp.float32)
    shift = jnp.asarray((s_mean - t_mean) / t_std, jnp.float32)
    x = images.astype(jnp.float32) * scale + shift
    return resize.resize_images(x, (self.image_size, self.image_size))

  def apply(self, params: Any, images: jax.Array, *, attn_layers: Sequence[int] = (-1,),
            dtype: Optional[str] = None) -> dict[str, Any]:
    """Runs the teacher; nothing it returns carries gradients.

    images: [B, H, H, 3] float, normalised with the student's ImageNet mean/std, any H (resized).
    Returns {"hidden_states": tuple of depth + 1 arrays [B, 1 + N, D] (embedding output, for
    CLIP after pre_layrnorm, then each block's output, before the final norm: transformers'
    `hidden_states`), "final": last block after the final norm (ViT layernorm, CLIP
    post_layernorm), all tokens [B, 1 + N, D], "pooled": final[:, 0] [B, D], "attn": {i: probs
    [B, heads, 1 + N, 1 + N]} for i in attn_layers made non-negative, and "embeds" [B, P] when
    the teacher has a visual projection}. N = grid ** 2.
    `dtype` overrides the teacher's matmul dtype ("float32" | "bfloat16").
    """
    net = TeacherNet(self.arch, dtype=jnp.dtype(dtype or self.dtype))
    x = self.preprocess(jax.lax.stop_gradient(images))
    out = net.apply({"params": jax.lax.stop_gradient(params)}, x, attn_layers=tuple(attn_layers))
    return jax.tree.map(jax.lax.stop_gradient, out)

  def __call__(self, images: jax.Array, **kwargs) -> dict[str, Any]:
    """`apply` with the teacher's own params (convenient outside jit)."""
    return self.apply(self.params, images, **kwargs)

  # ---- matching a student --------------------------------------------------------------------
  def for_student(self, image_size: Size, patch_size: Size) -> "Teacher":
    """A teacher whose token grid equals the student's (image_size // patch_size).

    The teacher then runs on images of side grid * its own patch (CLIP-L/14 under a /16 student
    at 224: 14 * 14 = 196 px), and its position embedding is resized once, here, from the
    current grid to the student's with torch's bicubic kernel (as transformers'
    `interpolate_pos_encoding` does it; see `resize`). Calling it again resizes from the current
    grid, not the checkpoint's. Raises ValueError naming both grids when they cannot be matched.
    """
    grid = student_grid(image_size, patch_size, self.grid)
    if grid == self.grid:
      return self
    arch = dataclasses.replace(self.arch, grid=grid)
    pos = self.params["pos_embedding"]
    if isinstance(pos, jax.ShapeDtypeStruct):  # an abstract teacher (`zoo.load(abstract=True)`)
      new_pos = jax.ShapeDtypeStruct(param_shapes(arch)["pos_embedding"].shape, pos.dtype)
    else:
      resized = resize.resize_pos_embedding(np.asarray(pos, np.float32),
                                            (1 + grid * grid, pos.shape[-1]))
      new_pos = jnp.asarray(resized, pos.dtype)
    return dataclasses.replace(self, arch=arch, params={**self.params, "pos_embedding": new_pos})


def map_teachers(fn: Callable[..., Any], teacher: Any, *rest: Any) -> Any:
  """`fn(teacher, *rest)` for one teacher; for several (a tuple of Teachers: joint mimicking) the
  tuple of `fn` over them and the matching entries of each of `rest`. Every per-teacher value of
  a run (parameters, shardings, outputs, heads) takes this shape: the bare value for one teacher,
  a tuple for several, so that a single-teacher run is unchanged."""
  if isinstance(teacher, tuple):
    return tuple(fn(*args) for args in zip(teacher, *rest, strict=True))
  return fn(teacher, *rest)


def each(teacher: Any) -> tuple["Teacher", ...]:
  """The teachers of a run as a tuple: () for None, (t,) for one, the tuple itself for several."""
  if teacher is None:
    return ()
  return teacher if isinstance(teacher, tuple) else (teacher,)


def student_grid(image_size: Size, patch_size: Size, teacher_grid: int) -> int:
  """The student's square grid side; ValueError "teacher grid AxB vs student grid CxD" if none."""
  ih, iw = _pair(image_size)
  ph, pw = _pair(patch_size)
  tg = f"teacher grid {teacher_grid}x{teacher_grid}"
  if ih % ph or iw % pw:
    raise ValueError(f"Cannot match {tg} vs student grid {ih / ph:g}x{iw / pw:g}: the student's "
                     f"image size {ih}x{iw} is not a multiple of its patch size {ph}x{pw}.")
  gh, gw = ih // ph, iw // pw
  if gh != gw or gh <= 0:
    raise ValueError(f"Cannot match {tg} vs student grid {gh}x{gw}: teachers run on square "
                     "grids only.")
  return gh


def _pair(size: Size) -> tuple[int, int]:
  if isinstance(size, int):
    return size, size
  h, w = size
  return int(h), int(w)
