"""What each config value may be: declared beside its default, checked in one place.

Every module that builds defaults declares what its keys may hold, in a dict `ALLOWED` beside
them (keys relative to the block it builds): `mim_jax/defaults.py` (the keys every config has,
and the few some configs add), each objective module (`config.objective`) and
`mim_jax/data/input_pipeline.py` (`config.data`; `AUGMENT_ALLOWED`: `config.augment`). This
module holds only the kinds of declaration; `mim_jax.validate` gathers a config's declarations
and, before a run reads or writes anything, refuses the first value outside them with one line
naming the key, the value and what the key takes. A declaration may also bound a value by other values
(`where`): the mask ratio by the patch grid, top-K by the teacher's depth.

The checks read a plain copy of the config (`config.to_dict()`), never the live ConfigDict.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Optional, Sequence

from mim_jax import config as config_lib

Where = Callable[[Any, "Context"], Optional[str]]


@dataclasses.dataclass(frozen=True)
class Allowed:
  """What one key may hold: `text` says it, `accepts` decides it, `bad` is a value it refuses
  (the tests walk every key with one; None for a free key). `optional`: None too. `why`: what
is wrong with a refused value, where more can be said than `text`. `where`: (value, context) ->
what the key takes given the other values, when it does not fit them."""
  text: str
  accepts: Callable[[Any], bool]
  bad: Any
  optional: bool = False
  where: Optional[Where] = None
  why: Optional[Callable[[Any], str]] = None

  def describe(self) -> str:
    return self.text + (", or None" if self.optional else "")

  def problem(self, value: Any) -> Optional[str]:
    """None when `value` is allowed (by itself), else what the key takes."""
    if value is None:
      return None if self.optional else self.describe()
    if self.accepts(value):
      return None
    return self.describe() + (f" ({self.why(value).rstrip('.')})" if self.why else "")

  def bound(self, where: Where) -> "Allowed":
    """This declaration, further bounded by other values (`where`)."""
    return dataclasses.replace(self, where=where)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _interval(ge, gt, le, lt) -> str:
  lo = f"[{ge}" if ge is not None else (f"({gt}" if gt is not None else None)
  hi = f"{le}]" if le is not None else (f"{lt})" if lt is not None else None)
  if lo and hi:
    return f"in {lo}, {hi}"
  if lo:
    return f">= {ge}" if ge is not None else f"> {gt}"
  if hi:
    return f"<= {le}" if le is not None else f"< {lt}"
  return ""


def number(*, ge: Optional[float] = None, gt: Optional[float] = None,
           le: Optional[float] = None, lt: Optional[float] = None, integer: bool = False,
           optional: bool = False, also: Sequence[Any] = (), note: str = "") -> Allowed:
  """A number (an integer when `integer`) within the bounds given, or one of `also`."""
  def accepts(v):
    if v in also and _is_number(v):
      return True
    return (_is_number(v) and (not integer or float(v).is_integer())
            and (ge is None or v >= ge) and (gt is None or v > gt)
            and (le is None or v <= le) and (lt is None or v < lt))
  bounds = _interval(ge, gt, le, lt)
  text = " ".join(filter(None, ["an integer" if integer else "a number", bounds]))
  if also:
    text += ", or " + " or ".join(map(str, also))
  if note:
    text += f" ({note})"
  if ge is not None:
    bad = ge - 1
  elif gt is not None:
    bad = gt
  elif le is not None:
    bad = le + 1
  elif lt is not None:
    bad = lt
  else:
    bad = 0.5 if integer else "nan"
  while bad in also:
    bad -= 1
  return Allowed(text, accepts, bad, optional)


def integer(**kw) -> Allowed:
  return number(integer=True, **kw)


def one_of(*choices: Any, optional: bool = False, note: str = "") -> Allowed:
  text = "one of " + ", ".join(map(repr, choices)) + (f" ({note})" if note else "")
  return Allowed(text, lambda v: isinstance(v, type(choices[0])) and v in choices,
                 "not-a-choice", optional)


def listed(*choices: str, optional: bool = False, note: str = "") -> Allowed:
  """Comma-separated names, each one of `choices` ("float32,bfloat16")."""
  def accepts(v):
    return isinstance(v, str) and all(n.strip() in choices for n in v.split(","))
  text = (f"one of {', '.join(map(repr, choices))}, or several separated by commas"
          + (f" ({note})" if note else ""))
  return Allowed(text, accepts, "not-a-choice", optional)


def flag(optional: bool = False) -> Allowed:
  return Allowed("True or False", lambda v: isinstance(v, bool), "maybe", optional)


def pair(*, gt: float, le: float, note: str = "") -> Allowed:
  """Two numbers lo <= hi in (gt, le] (a range, e.g. a crop scale)."""
  def accepts(v):
    return (isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_is_number, v))
            and gt < v[0] <= v[1] <= le)
  text = f"two numbers lo <= hi in ({gt}, {le}]" + (f" ({note})" if note else "")
  return Allowed(text, accepts, (le, gt + (le - gt) / 2))


def indices(optional: bool = False, note: str = "") -> Allowed:
  """A tuple of integers (block indices)."""
  def accepts(v):
    return isinstance(v, (tuple, list)) and all(isinstance(i, int) and not isinstance(i, bool)
                                                for i in v)
  return Allowed("a tuple of integers" + (f" ({note})" if note else ""), accepts, ("a",),
                 optional)


def checked_by(parse: Callable[[Any], Any], text: str, bad: Any,
               optional: bool = False) -> Allowed:
  """A value that `parse` accepts without a ValueError (a variant code, a RandAugment spec);
  a refused value says what `parse` said."""
  def error(v) -> Optional[str]:
    try:
      parse(v)
    except (ValueError, TypeError, AttributeError) as e:
      return str(e) or type(e).__name__
    return None
  return Allowed(text, lambda v: error(v) is None, bad, optional, why=error)


def free(why: str) -> Allowed:
  """A key with no range of its own (a path, a dataset name); `why` says what checks it."""
  return Allowed(f"anything ({why})", lambda v: True, None, True)


# ---- the context a bound reads -----------------------------------------------------------------
class Context:
  """What bounds read from the rest of the config (a plain dict): the student's patch and grid,
  the teachers' depths. Each is None when the config does not determine it (then the bound is
  not applied: another key's own check reports why)."""

  def __init__(self, config: Mapping[str, Any],
               teacher_depths: Optional[tuple[int, ...]] = None):
    self.config = config
    self.teacher_depths = teacher_depths  # None: unknown (see `validate.teacher_depths`)

  def get(self, dotted: str, default: Any = None) -> Any:
    node: Any = self.config
    for part in dotted.split("."):
      if not isinstance(node, Mapping) or part not in node:
        return default
      node = node[part]
    return node

  @functools.cached_property
  def patch(self) -> Optional[int]:
    try:
      return config_lib.decode_variant(self.get("student.variant"))[1]
    except (ValueError, TypeError, AttributeError):
      return None

  @functools.cached_property
  def num_patches(self) -> Optional[int]:
    size = self.get("data.image_size")
    if not self.patch or not isinstance(size, int) or size % self.patch or size <= 0:
      return None
    return (size // self.patch) ** 2


# ---- bounds by other values (`Allowed.bound`) ---------------------------------------------------
def multiple_of_patch(size: int, ctx: Context) -> Optional[str]:
  """data.image_size: whole patches of the student."""
  if ctx.patch and size % ctx.patch:
    return (f"a multiple of the student's patch {ctx.patch} (student.variant "
            f"{ctx.get('student.variant')!r})")
  return None


def at_most(other: str) -> Where:
  """Not more than the key `other` (when that is set): a warmup within the run."""
  def where(value: Any, ctx: Context) -> Optional[str]:
    limit = ctx.get(other)
    if _is_number(limit) and value > limit:
      return f"at most {other} ({limit})"
    return None
  return where


def prefixed(prefix: str, declared: Mapping[str, Allowed]) -> dict[str, Allowed]:
  return {f"{prefix}.{k}": v for k, v in declared.items()}
