"""What each config value may be: declared beside its default, checked in one place.

Every module that builds defaults declares what its keys may hold, in a dict `ALLOWED` beside
them (keys relative to the block it builds): `configs/common.py` (the keys every config has, and
the few some configs add), each objective module (`config.objective`) and
`mim_jax/data/input_pipeline.py` (`config.data`; `AUGMENT_ALLOWED`: `config.augment`).
`declarations(config)` gathers a config's; `check(config)` (from `mim_jax.validate.check`, before
a run reads or writes anything) refuses the first value outside them with one line naming the
key, the value and what the key takes. A declaration may also bound a value by other values
(`where`): the mask ratio by the patch grid, top-K by the teacher's depth.

`check` reads a plain copy of the config (`config.to_dict()`), never the live ConfigDict.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence

from mim_jax import saved_config

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

  def __init__(self, config: Mapping[str, Any]):
    self.config = config

  def get(self, dotted: str, default: Any = None) -> Any:
    node: Any = self.config
    for part in dotted.split("."):
      if not isinstance(node, Mapping) or part not in node:
        return default
      node = node[part]
    return node

  @functools.cached_property
  def patch(self) -> Optional[int]:
    from mim_jax import config as config_lib  # pylint: disable=import-outside-toplevel
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

  @functools.cached_property
  def teacher_depths(self) -> Optional[tuple[int, ...]]:
    """The depth of each teacher in `teacher.spec`, from its config.json alone; None when one
    is unknown (a checkpoint not there yet, the demo's teacher before its training)."""
    from mim_jax import config as config_lib  # pylint: disable=import-outside-toplevel
    from mim_jax.teachers import zoo  # pylint: disable=import-outside-toplevel
    try:
      specs = config_lib.teacher_specs(self.get("teacher.spec"))
      return tuple(zoo.shape(_demo_dir(s, self.get("runlocal")))[1].depth for s in specs) or None
    except Exception:  # pylint: disable=broad-except  (unreadable: loading the teacher says why)
      return None


def _demo_dir(spec: str, runlocal: bool) -> str:
  """The demo teacher's directory for spec "demo" (it may not exist yet), else `spec`."""
  if spec != "demo":
    return spec
  from mim_jax import demo  # pylint: disable=import-outside-toplevel
  return os.path.join(demo.cache_dir(), "demo_teacher_local" if runlocal else "demo_teacher")


# ---- bounds by other values (`Allowed.bound`) ---------------------------------------------------
def multiple_of_patch(size: int, ctx: Context) -> Optional[str]:
  """data.image_size: whole patches of the student."""
  if ctx.patch and size % ctx.patch:
    return (f"a multiple of the student's patch {ctx.patch} (student.variant "
            f"{ctx.get('student.variant')!r})")
  return None


def leaves_a_patch(ratio: float, ctx: Context) -> Optional[str]:
  """mask.ratio: at least one patch stays visible (the encoder needs a token to see)."""
  from mim_jax.data import block_mask  # pylint: disable=import-outside-toplevel
  n, kind = ctx.num_patches, ctx.get("mask.kind")
  if n is None or kind == "none":
    return None
  visible = n - block_mask.block_num_masked(n, ratio) if kind == "block" else int(n * (1 - ratio))
  if visible < 1:
    return (f"a number in [0, 1] that leaves at least one of the {n} patches visible "
            f"(mask.kind {kind!r})")
  return None


def at_most(other: str) -> Where:
  """Not more than the key `other` (when that is set): a warmup within the run."""
  def where(value: Any, ctx: Context) -> Optional[str]:
    limit = ctx.get(other)
    if _is_number(limit) and value > limit:
      return f"at most {other} ({limit})"
    return None
  return where


# ---- gathering and checking --------------------------------------------------------------------
def prefixed(prefix: str, allowed: Mapping[str, Allowed]) -> dict[str, Allowed]:
  return {f"{prefix}.{k}": v for k, v in allowed.items()}


def declarations(config: Mapping[str, Any]) -> dict[str, Allowed]:
  """Every declaration that applies to `config` (a plain dict), by dotted key."""
  from configs import common  # pylint: disable=import-outside-toplevel
  from mim_jax import objectives  # pylint: disable=import-outside-toplevel
  from mim_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  out = dict(common.ALLOWED)
  if config.get("method") in objectives.METHODS:
    out.update(prefixed("objective", objectives.get(config["method"]).ALLOWED))
  out.update(prefixed("data", input_pipeline.ALLOWED))
  out.update(prefixed("augment", input_pipeline.AUGMENT_ALLOWED))
  return out


def problems(config: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
  """(key, value, what the key takes) of every value outside its declaration, in key order:
  first the values out of their own range, then (when there are none) those out of the bound
  other values put on them."""
  values = saved_config.flatten(config)
  declared = declarations(config)
  out = [(k, values[k], why) for k in sorted(values) if k in declared
         for why in [declared[k].problem(values[k])] if why]
  if out:
    return out
  context = Context(config)
  return [(k, values[k], why) for k in sorted(values)
          if k in declared and declared[k].where and values[k] is not None
          for why in [declared[k].where(values[k], context)] if why]


def check(config: Mapping[str, Any]) -> None:
  """Raises ValueError, one line, on the first value outside its declaration."""
  found = problems(config)
  if found:
    key, value, why = found[0]
    more = f" (and {len(found) - 1} more: {', '.join(k for k, _, _ in found[1:4])})" if (
        len(found) > 1) else ""
    raise ValueError(f"--config.{key}={value!r} is out of range: {key} takes "
                     f"{why.rstrip('.')}{more}.")
