r"""The cost of a compiled XLA module, read from its text: FLOPs and bytes per instruction.

  python -m mim_jax.hlo_cost step.hlo [--chip v5e] [--top 15]
      (a module written by `python -m mim_jax.aot ... --save_hlo step.hlo`)

XLA's own cost analysis (`compiled.cost_analysis()`) gives one total per module: it counts a while
loop's body once (a scanned stack of blocks as one block), adds every memory space into one
"bytes accessed" (on TPU the on-chip VMEM traffic too) and knows nothing of a custom call's
work (a Pallas kernel counts zero). This module reads `compiled.as_text()` instead, instruction by
instruction, so that each figure says what it counts:

- FLOPs per instruction: dots and convolutions (2 per multiply-add, padding taps excluded, as
  XLA counts them) and elementwise and reduce ops (one per element, transcendentals apart), the
  instructions inside a fusion summed into the fusion.
- bytes per instruction and memory space: what an instruction reads (operands) and writes
  (outputs), by the memory space its layout names: `S(1)` is on-chip VMEM on TPU, no annotation
  is space 0, the device's HBM (the only space on CPU and GPU). A fusion that only slices an
  operand reads the slice; one that updates a buffer in place (dynamic-update-slice) writes the
  update. Prefetch and eviction copies (`copy-start`) and asynchronous slices (`slice-start`)
  move bytes between spaces and count on both sides.
- loops: the instructions of a while body count `trip count` times, the count read from the
  loop's `known_trip_count` (XLA writes it for scans) or from its condition (`i < N`); a loop
  whose count depends on data (rejection sampling) counts once and is listed.
- collectives: bytes each chip sends over the interconnect, per kind (ring algorithms: an
  all-reduce of S bytes over n chips sends 2 (n - 1) / n S, an all-gather or reduce-scatter
  (n - 1) / n of the full array, a collective-permute S).
- custom calls: a kernel XLA cannot see (a Pallas call) carries its cost estimate in its
  backend config (`pl.pallas_call(..., cost_estimate=pl.CostEstimate(...))`): its FLOPs and
  bytes are those. Kernels without one are costed by `KERNEL_COSTS` (register more with
  `register_kernel_cost`), else listed as uncosted, never silently zero.
- origin: the op_name metadata of each instruction names the part of the train step it comes
  from (the named scopes of `mim_jax/step.py`: teacher forward, student, loss, optimizer; the
  backward pass as `transpose(...)`), which `breakdown` groups by.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import re
import sys
from typing import Callable, Mapping, Optional, Sequence

from mim_jax import chips
from mim_jax.step import SCOPES

HBM = 0  # memory space of device memory (HBM on TPU and GPU, RAM on CPU)
VMEM = 1  # TPU on-chip vector memory

DTYPE_BYTES: dict[str, float] = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4,
    "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1,
    "f8e4m3": 1, "f8e3m4": 1, "f4e2m1fn": 0.5, "f8e8m0fnu": 1, "token": 0, "opaque": 0,
}

# ---- instructions that move no data of their own ----------------------------------------------
_NO_TRAFFIC = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
    "conditional", "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency",
    "domain", "copy-done", "slice-done", "async-done", "async-update", "get-dimension-size",
    "send-done", "recv-done",
}
# Custom calls that are layout bookkeeping on TPU (buffers assigned side by side), not copies.
_NO_TRAFFIC_TARGETS = {"ConcatBitcast", "AllocateBuffer"}
# Custom calls that move or annotate data and do no arithmetic: zero FLOPs is their real cost.
_NO_FLOP_TARGETS = _NO_TRAFFIC_TARGETS | {
    "Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape", "MoveToHost", "MoveToDevice",
    "annotate_device_placement", "PadToStatic", "SliceToDynamic", "xla_python_cpu_callback",
    "xla_ffi_python_cpu_callback", "LayoutConstraint", "InspectSharding",
}

_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
                "ragged-all-to-all", "collective-broadcast")

# Elementwise ops XLA's cost analysis counts as transcendentals rather than FLOPs.
_TRANSCENDENTAL = {"exponential", "exponential-minus-one", "log", "log-plus-one", "logistic",
                   "power", "sqrt", "rsqrt", "cbrt", "tanh", "sine", "cosine", "tan", "atan2",
                   "erf", "erf-inv"}
_ELEMENTWISE = _TRANSCENDENTAL | {
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "remainder", "and", "or",
    "xor", "not", "negate", "abs", "sign", "compare", "select", "clamp", "convert", "floor",
    "ceil", "round-nearest-afz", "round-nearest-even", "shift-left", "shift-right-logical",
    "shift-right-arithmetic", "is-finite", "popcnt", "count-leading-zeros", "real", "imag",
    "stochastic-convert", "reduce-precision",
}


# --------------------------------------------------------------------------------------------
# Parsing.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Array:
  """One array of an HLO shape: dtype, dimensions, memory space (0 unless `S(n)`)."""
  dtype: str
  dims: tuple[int, ...]
  space: int = HBM

  @property
  def size(self) -> int:
    return math.prod(self.dims)

  @property
  def nbytes(self) -> float:
    return self.size * DTYPE_BYTES.get(self.dtype, 4)

  def __str__(self) -> str:
    return f"{self.dtype}[{','.join(map(str, self.dims))}]"


_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\](?:\{([^{}]*)\})?")
_SPACE = re.compile(r"S\((\d+)\)")


def parse_shape(text: str) -> tuple[Array, ...]:
  """Every array of a (possibly nested tuple) shape string, in order."""
  out = []
  for dtype, dims, layout in _ARRAY.findall(text):
    space = _SPACE.search(layout or "")
    out.append(Array(dtype, tuple(int(d) for d in dims.split(",") if d),
                     int(space.group(1)) if space else HBM))
  return tuple(out)


@dataclasses.dataclass
class Instr:
  name: str
  shape: tuple[Array, ...]  # flattened tuple elements
  opcode: str
  operands: tuple[str, ...]
  attrs: str  # everything after the operand list
  is_root: bool = False
  is_tuple: bool = False
  literal: str = ""  # what the parentheses hold for a constant or a parameter (its index)

  def attr(self, key: str) -> Optional[str]:
    """The value of `key=` (a %name, a {...} group or a bare token), or None."""
    m = re.search(rf"(?:^|[ ,]){re.escape(key)}=", self.attrs)
    if not m:
      return None
    return _read_value(self.attrs, m.end())

  @property
  def op_name(self) -> str:
    m = re.search(r'op_name="((?:[^"\\]|\\.)*)"', self.attrs)
    return m.group(1) if m else ""

  @property
  def called(self) -> list[str]:
    """Names of the computations this instruction calls (calls=, body=, to_apply=, ...)."""
    out = []
    for key in ("calls", "body", "condition", "to_apply", "true_computation",
                "false_computation", "branch_computations"):
      value = self.attr(key)
      if value:
        out += re.findall(r"%([\w.\-]+)", value)
    return out


def _read_value(text: str, start: int) -> str:
  """The attribute value starting at text[start]: balanced {...} / (...) / "..." or a token."""
  depth, i, quote = 0, start, False
  while i < len(text):
    c = text[i]
    if quote:
      if c == "\\":
        i += 1
      elif c == '"':
        quote = False
        if depth == 0:
          return text[start:i + 1]
    elif c == '"':
      quote = True
    elif c in "{([":
      depth += 1
    elif c in "})]":
      depth -= 1
      if depth == 0 and c in "})":
        # a group ends the value unless more of it follows (e.g. replica_groups=mesh[..] {..})
        if i + 1 >= len(text) or text[i + 1] in ", ":
          if not (text[i + 1:i + 3] == " {" and text[start] != "{"):
            return text[start:i + 1]
    elif c == "," and depth == 0:
      return text[start:i]
    i += 1
  return text[start:]


def _matching(text: str, start: int) -> int:
  """Index just past the bracket group opening at text[start]."""
  depth = 0
  for i in range(start, len(text)):
    if text[i] in "({[":
      depth += 1
    elif text[i] in ")}]":
      depth -= 1
      if depth == 0:
        return i + 1
  return len(text)


_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_LINE = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_COMMENT = re.compile(r"/\*.*?\*/")


def parse_instruction(line: str) -> Optional[Instr]:
  m = _LINE.match(line)
  if not m:
    return None
  is_root, name, rest = bool(m.group(1)), m.group(2), m.group(3)
  rest = _COMMENT.sub("", rest)
  if rest.startswith("("):
    end = _matching(rest, 0)
    shape_text, is_tuple = rest[:end], True
  else:
    am = _ARRAY.match(rest)
    if not am:
      return None
    end, shape_text, is_tuple = am.end(), rest[:am.end()], False
  om = re.match(r"\s*([\w\-]+)\(", rest[end:])
  if not om:
    return None
  opcode = om.group(1)
  args_start = end + om.end() - 1
  args_end = _matching(rest, args_start)
  inside = rest[args_start + 1:args_end - 1]
  operands = tuple(re.findall(r"%([\w.\-]+)", inside))
  return Instr(name=name, shape=parse_shape(shape_text), opcode=opcode, operands=operands,
               attrs=rest[args_end:], is_root=is_root, is_tuple=is_tuple,
               literal=inside if opcode in ("constant", "parameter") else "")


@dataclasses.dataclass
class Module:
  computations: dict[str, list[Instr]]
  entry: str
  work: dict = dataclasses.field(default_factory=dict, repr=False)  # computation -> Work

  def __post_init__(self):
    self.symbols = {c: {i.name: i for i in body} for c, body in self.computations.items()}

  def root(self, computation: str) -> Instr:
    body = self.computations[computation]
    return next((i for i in body if i.is_root), body[-1])


def parse_module(text: str) -> Module:
  """The computations of an HLO module's text (`compiled.as_text()`)."""
  computations: dict[str, list[Instr]] = {}
  entry, current = None, None
  for line in text.splitlines():
    if current is None:
      h = _HEADER.match(line)
      if h:
        current = h.group(2)
        computations[current] = []
        if h.group(1):
          entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    instr = parse_instruction(line)
    if instr is not None:
      computations[current].append(instr)
  if entry is None:
    raise ValueError("No ENTRY computation in the HLO text.")
  return Module(computations, entry)


# --------------------------------------------------------------------------------------------
# FLOPs.
# --------------------------------------------------------------------------------------------
def _ints(text: Optional[str]) -> list[int]:
  return [int(x) for x in re.findall(r"-?\d+", text or "")]


def dot_flops(instr: Instr, lhs: Array) -> float:
  """2 x output elements x contracted size."""
  contracting = _ints(instr.attr("lhs_contracting_dims"))
  k = math.prod(lhs.dims[d] for d in contracting)
  return 2.0 * instr.shape[0].size * k


def _valid_taps(in_size: int, out_size: int, window: int, stride: int, pad_lo: int,
                lhs_dilation: int, rhs_dilation: int) -> int:
  """Sum over output positions of the kernel taps that land on real (not padding, not
  dilation-hole) input positions, along one spatial dimension."""
  dilated = (in_size - 1) * lhs_dilation + 1 if in_size else 0
  total = 0
  for o in range(out_size):
    base = o * stride - pad_lo
    if lhs_dilation == 1:  # taps k with 0 <= base + k * rhs_dilation < dilated
      first = max(0, -(base // rhs_dilation) if base < 0 else 0)
      first += 1 if base + first * rhs_dilation < 0 else 0
      last = min(window - 1, (dilated - 1 - base) // rhs_dilation)
      total += max(0, last - first + 1)
      continue
    for k in range(window):
      pos = base + k * rhs_dilation
      if 0 <= pos < dilated and pos % lhs_dilation == 0:
        total += 1
  return total


def _window(instr: Instr, spatial: int) -> dict[str, list[int]]:
  """A convolution's or reduce-window's `window={size=.. stride=.. pad=lo_hi ..}`, one entry
  per windowed dimension (defaults filled in)."""
  fields = dict(re.findall(r"(\w+)=([\w\-]+)", instr.attr("window") or ""))
  out = {}
  for key, default in (("size", 1), ("stride", 1), ("lhs_dilate", 1), ("rhs_dilate", 1)):
    out[key] = ([int(x) for x in fields[key].split("x")] if key in fields
                else [default] * spatial)
  out["pad"] = ([int(p.split("_")[0]) for p in fields["pad"].split("x")] if "pad" in fields
                else [0] * spatial)
  return out


def convolution_flops(instr: Instr, lhs: Array, rhs: Array) -> float:
  """2 x (output elements without spatial dims) x input features per group x the valid kernel
  taps summed over spatial positions (TPU compilers write most matmuls as convolutions, some
  with a padded window whose padding taps do no work)."""
  m = re.match(r"(\w+)_(\w+)->(\w+)", instr.attr("dim_labels") or "")
  if not m:
    return 0.0
  lhs_l, rhs_l, out_l = m.groups()
  out = instr.shape[0]
  spatial = sorted((c for c in out_l if c.isdigit()), key=int)
  w = _window(instr, len(spatial))
  taps = 1
  for j, c in enumerate(spatial):
    taps *= _valid_taps(lhs.dims[lhs_l.index(c)], out.dims[out_l.index(c)], w["size"][j],
                        w["stride"][j], w["pad"][j], w["lhs_dilate"][j], w["rhs_dilate"][j])
  non_spatial = math.prod(out.dims[i] for i, c in enumerate(out_l) if not c.isdigit())
  return 2.0 * non_spatial * rhs.dims[rhs_l.index("i")] * taps


def reduce_window_taps(instr: Instr, operand: Array) -> int:
  """Input elements a reduce-window combines, padding excluded (TPU compilers write a reduce
  followed by a broadcast, e.g. softmax's max and sum, as a reduce-window over a padded row)."""
  out = instr.shape[0]
  w = _window(instr, len(out.dims))
  taps = 1
  for j in range(len(out.dims)):
    taps *= _valid_taps(operand.dims[j], out.dims[j], w["size"][j], w["stride"][j],
                        w["pad"][j], w["lhs_dilate"][j], w["rhs_dilate"][j])
  return taps


@dataclasses.dataclass
class Work:
  flops: float = 0.0
  transcendentals: float = 0.0
  matmul_flops: float = 0.0  # of which dots and convolutions

  def __iadd__(self, other: "Work") -> "Work":
    self.flops += other.flops
    self.transcendentals += other.transcendentals
    self.matmul_flops += other.matmul_flops
    return self


def computation_work(module: Module, name: str) -> Work:
  """The arithmetic of one execution of computation `name` (a fused computation's body)."""
  if name not in module.work:
    total = Work()
    for instr in module.computations.get(name, []):
      total += instruction_work(module, name, instr)
    module.work[name] = total
  return module.work[name]


def instruction_work(module: Module, computation: str, instr: Instr) -> Work:
  symbols = module.symbols[computation]
  op = instr.opcode

  def operand(i: int) -> Optional[Array]:
    src = symbols.get(instr.operands[i]) if i < len(instr.operands) else None
    return src.shape[0] if src is not None and src.shape else None

  if op == "fusion":
    w = Work()
    for c in instr.called:
      w += computation_work(module, c)
    return w
  if op == "dot" and operand(0) is not None:
    f = dot_flops(instr, operand(0))
    return Work(flops=f, matmul_flops=f)
  if op == "convolution" and operand(0) is not None and operand(1) is not None:
    f = convolution_flops(instr, operand(0), operand(1))
    return Work(flops=f, matmul_flops=f)
  if not instr.shape:
    return Work()
  if op in _ELEMENTWISE:
    n = float(sum(a.size for a in instr.shape))
    return Work(transcendentals=n) if op in _TRANSCENDENTAL else Work(flops=n)
  if op in ("reduce", "reduce-window", "scatter", "all-reduce", "reduce-scatter"):
    # one application of the reducer per input element (per window tap for reduce-window,
    # per update for scatter); a variadic reduce's inputs are its first half of operands
    reducer = computation_work(module, instr.called[-1]) if instr.called else Work()
    per = max(reducer.flops, 1.0)
    if op == "reduce-window":
      n = reduce_window_taps(instr, operand(0)) if operand(0) is not None else 0
    elif op == "scatter":
      n = operand(len(instr.operands) - 1).size if operand(len(instr.operands) - 1) else 0
    else:
      inputs = len(instr.operands) // 2 if op == "reduce" else len(instr.operands)
      n = sum(operand(i).size for i in range(inputs) if operand(i) is not None)
    return Work(flops=per * n)
  return Work()


# --------------------------------------------------------------------------------------------
# Bytes.
# --------------------------------------------------------------------------------------------
Spaces = dict  # memory space -> bytes


def _add(spaces: Spaces, array: Array, nbytes: Optional[float] = None) -> None:
  spaces[array.space] = spaces.get(array.space, 0.0) + (array.nbytes if nbytes is None
                                                       else nbytes)


def _through_bitcasts(symbols: Mapping[str, Instr], instr: Instr) -> Instr:
  while instr.opcode == "bitcast" and instr.operands and instr.operands[0] in symbols:
    instr = symbols[instr.operands[0]]
  return instr


def _parameter_read(module: Module, fused: str, index: int, full: Array) -> float:
  """Bytes a fusion reads of its operand `index`: only the slices when every use slices it,
  nothing when its only use is as the buffer a dynamic-update-slice writes into."""
  body = module.computations[fused]
  names = {i.name for i in body if i.opcode == "parameter" and i.literal == str(index)}
  if not names:
    return full.nbytes
  # follow bitcasts of the parameter
  frontier, aliases = list(names), set(names)
  while frontier:
    n = frontier.pop()
    for i in body:
      if i.opcode == "bitcast" and i.operands and i.operands[0] == n and i.name not in aliases:
        aliases.add(i.name)
        frontier.append(i.name)
  if module.root(fused).name in aliases:
    return full.nbytes  # the operand itself (a bitcast of it) is the fusion's result
  users = [(i, k) for i in body if i.opcode != "bitcast"
           for k, o in enumerate(i.operands) if o in aliases]
  if not users:
    return 0.0
  read = 0.0
  for user, k in users:
    if user.opcode in ("dynamic-slice", "slice") and k == 0:
      read += user.shape[0].size * DTYPE_BYTES.get(full.dtype, 4)
    elif user.opcode == "dynamic-update-slice" and k == 0:
      continue  # written in place, not read
    elif user.opcode == "fusion" and user.called:
      read += _parameter_read(module, user.called[0], k, full)
    else:
      return full.nbytes
  return min(read, full.nbytes)


def _output_written(module: Module, fused: str, position: int, full: Array) -> float:
  """Bytes a fusion writes to output `position`: the update only when that output is a buffer
  updated in place (dynamic-update-slice)."""
  symbols = module.symbols[fused]
  root = _through_bitcasts(symbols, module.root(fused))
  if root.opcode == "tuple":
    if position >= len(root.operands):
      return full.nbytes
    root = _through_bitcasts(symbols, symbols[root.operands[position]])
  if root.opcode == "dynamic-update-slice" and len(root.operands) > 1:
    update = symbols.get(root.operands[1])
    if update is not None and update.shape:
      return update.shape[0].size * DTYPE_BYTES.get(full.dtype, 4)
  return full.nbytes


# --------------------------------------------------------------------------------------------
# Collectives.
# --------------------------------------------------------------------------------------------
def group_size(instr: Instr, num_devices: int) -> int:
  """Devices per replica group of a collective (all of them when no groups are named)."""
  groups = instr.attr("replica_groups")
  if groups:
    m = re.match(r"\[([\d,]+)\]<=", groups)
    if m:  # iota form [groups, size]<=[...]
      return _ints(m.group(1))[-1]
    m = re.match(r"mesh\[(.*)\]\s*\{(.*)\}", groups)
    if m:  # mesh['a'=4,'b'=2] {'a'}
      sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
      return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", m.group(2)))
    first = re.search(r"\{([\d,\s]+)\}", groups)
    if first:
      return len(_ints(first.group(1)))
  pairs = instr.attr("source_target_pairs")
  if pairs:
    return 2
  return num_devices


def ici_bytes(kind: str, nbytes_in: float, nbytes_out: float, n: int) -> float:
  """Bytes one chip sends for a collective over n chips (ring algorithms)."""
  if n <= 1:
    return 0.0
  share = (n - 1) / n
  if kind == "all-reduce":
    return 2 * share * nbytes_in
  if kind == "all-gather":
    return share * nbytes_out
  if kind in ("reduce-scatter", "all-to-all", "ragged-all-to-all"):
    return share * nbytes_in
  return nbytes_in  # collective-permute, collective-broadcast


# --------------------------------------------------------------------------------------------
# Kernels the cost analysis cannot see.
# --------------------------------------------------------------------------------------------
KernelCost = Callable[[Instr, Sequence[Array]], tuple[float, float]]  # -> (flops, bytes)
KERNEL_COSTS: list[tuple[re.Pattern, KernelCost]] = []


def register_kernel_cost(pattern: str, cost: KernelCost) -> None:
  """Cost of custom calls whose target (or op_name) matches `pattern` and carry no cost
  estimate of their own: `cost(instr, operand arrays) -> (flops, bytes)`."""
  KERNEL_COSTS.append((re.compile(pattern), cost))


def _gemm_cost(instr: Instr, operands: Sequence[Array]) -> tuple[float, float]:
  """cuBLAS / cuBLASLt matmuls: 2 M N K from the backend config's contracting dims."""
  out = instr.shape[0]
  m = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', instr.attrs)
  k = math.prod(operands[0].dims[int(d)] for d in re.findall(r"\d+", m.group(1))) if m else 1
  nbytes = sum(a.nbytes for a in operands[:2]) + out.nbytes
  return 2.0 * out.size * k, nbytes


register_kernel_cost(r"^__cublas\$(lt\$)?(matmul|gemm)", _gemm_cost)


def custom_call_cost(instr: Instr, operands: Sequence[Array]) -> Optional[tuple[float, float]]:
  """(flops, bytes) of a custom call from its own cost estimate (Pallas/Mosaic writes one into
  its backend config) or from `KERNEL_COSTS`; None when nothing knows its cost."""
  m = re.search(r'"cost_estimate":\s*\{([^{}]*)\}', instr.attrs)
  if m:
    fields = dict(re.findall(r'"(\w+)":\s*"?(\d+)', m.group(1)))
    return float(fields.get("flops", 0)), float(fields.get("bytes_accessed", 0))
  target = (instr.attr("custom_call_target") or "").strip('"')
  for pattern, cost in KERNEL_COSTS:
    if pattern.search(target) or pattern.search(instr.op_name):
      return cost(instr, operands)
  return None


# --------------------------------------------------------------------------------------------
# Per-instruction costs of the module.
# --------------------------------------------------------------------------------------------
ORIGINS = ("teacher forward", "student forward", "loss", "backward", "optimizer",
           "input & masks", "collectives", "other")


def origin(op_name: str, opcode: str) -> str:
  """Which part of the train step an instruction comes from, by its op_name (the named scopes
  of `mim_jax.step.SCOPES`; autodiff's backward pass prefixes `transpose(`)."""
  base = opcode.removesuffix("-start").removesuffix("-done")
  if base in _COLLECTIVES:
    return "collectives"
  parts = re.split(r"[/()]", op_name)
  if "transpose" in parts:
    return "backward"
  for key, name in (("teacher", "teacher forward"), ("optimizer", "optimizer"),
                    ("masks", "input & masks"), ("student", "student forward"),
                    ("loss", "loss")):
    if SCOPES[key] in parts:
      return name
  return "other"


@dataclasses.dataclass
class OpCost:
  """One executed instruction of the module (per execution) and how often it runs."""
  name: str
  opcode: str
  computation: str
  op_name: str
  shape: str
  count: float  # executions per step (loop trip counts multiplied)
  work: Work
  spaces: Spaces  # memory space -> bytes read + written
  ici: float = 0.0  # bytes sent to other chips
  origin: str = "other"
  note: str = ""

  @property
  def hbm(self) -> float:
    return self.spaces.get(HBM, 0.0)

  @property
  def total_bytes(self) -> float:
    return sum(self.spaces.values())


@dataclasses.dataclass
class Loop:
  name: str
  computation: str
  trip_count: Optional[int]  # None: unknown (counted once)
  count: float  # executions of its body per step


@dataclasses.dataclass
class ModuleCost:
  ops: list[OpCost]
  loops: list[Loop]
  uncosted: list[OpCost]  # custom calls whose work is unknown

  @property
  def flops(self) -> float:
    return sum(o.work.flops * o.count for o in self.ops)

  @property
  def matmul_flops(self) -> float:
    return sum(o.work.matmul_flops * o.count for o in self.ops)

  @property
  def transcendentals(self) -> float:
    return sum(o.work.transcendentals * o.count for o in self.ops)

  def bytes_in(self, space: int) -> float:
    return sum(o.spaces.get(space, 0.0) * o.count for o in self.ops)

  @property
  def hbm_bytes(self) -> float:
    """Bytes read and written in device memory (space 0), loops counted per trip."""
    return self.bytes_in(HBM)

  @property
  def total_bytes(self) -> float:
    """Bytes read and written in every memory space (what XLA's 'bytes accessed' adds up)."""
    return sum(o.total_bytes * o.count for o in self.ops)

  @property
  def ici_bytes(self) -> float:
    return sum(o.ici * o.count for o in self.ops)

  def collectives(self) -> dict[str, tuple[int, float]]:
    """kind -> (instructions executed, bytes sent per chip)."""
    out: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for o in self.ops:
      if o.ici or o.origin == "collectives":
        kind = o.opcode.removesuffix("-start").removesuffix("-done")
        if o.opcode.endswith("-done"):
          continue
        out[kind][0] += o.count
        out[kind][1] += o.ici * o.count
    return {k: (int(v[0]), v[1]) for k, v in out.items()}

  def by_origin(self) -> dict[str, dict[str, float]]:
    out = {k: {"flops": 0.0, "hbm": 0.0, "bytes": 0.0, "ops": 0.0} for k in ORIGINS}
    for o in self.ops:
      row = out[o.origin]
      row["flops"] += o.work.flops * o.count
      row["hbm"] += o.hbm * o.count
      row["bytes"] += o.total_bytes * o.count
      row["ops"] += o.count
    return out


def _scalar(symbols: Mapping[str, Instr], name: str) -> Optional[int]:
  """The integer a scalar operand holds when it is a constant (through copies and casts)."""
  instr = symbols.get(name)
  while instr is not None and instr.opcode in ("copy", "bitcast", "convert", "reshape"):
    instr = symbols.get(instr.operands[0]) if instr.operands else None
  if instr is None or instr.opcode != "constant":
    return None
  m = re.fullmatch(r"\s*(-?\d+)\s*", instr.literal)
  return int(m.group(1)) if m else None


def _tuple_index(symbols: Mapping[str, Instr], name: str) -> Optional[int]:
  """k when `name` is element k of the loop state (get-tuple-element of the parameter)."""
  instr = symbols.get(name)
  while instr is not None and instr.opcode in ("copy", "bitcast", "convert"):
    instr = symbols.get(instr.operands[0]) if instr.operands else None
  if instr is None or instr.opcode != "get-tuple-element":
    return None
  src = symbols.get(instr.operands[0]) if instr.operands else None
  if src is None or src.opcode != "parameter":
    return None
  index = instr.attr("index")
  return int(index) if index and index.isdigit() else None


_FLIP = {"LT": "GT", "GT": "LT", "LE": "GE", "GE": "LE", "EQ": "EQ", "NE": "NE"}


def _trip_count(module: Module, computation: str, instr: Instr) -> Optional[int]:
  """Iterations of a while loop: XLA's `known_trip_count` when it wrote one, else read from
  the loop: a counter in the loop state that starts at a constant, steps by a constant in the
  body and is compared with a constant in the condition (scans step by 1 from 0; the TPU
  compiler's windowed matmul loops step by 2). None when the count depends on data."""
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"', instr.attrs)
  if m:
    return int(m.group(1))
  cond = (instr.attr("condition") or "").lstrip("%")
  body = (instr.attr("body") or "").lstrip("%")
  if cond not in module.computations or body not in module.computations:
    return None
  csym = module.symbols[cond]
  root = _through_bitcasts(csym, module.root(cond))
  direction = re.search(r"direction=(\w+)", root.attrs)
  if root.opcode != "compare" or not direction or len(root.operands) != 2:
    return None
  a, b = root.operands
  k, limit, op = _tuple_index(csym, a), _scalar(csym, b), direction.group(1)
  if k is None or limit is None:
    k, limit, op = _tuple_index(csym, b), _scalar(csym, a), _FLIP[op]
  if k is None or limit is None:
    return None
  state = module.symbols[computation].get(instr.operands[0]) if instr.operands else None
  if state is None or state.opcode != "tuple" or k >= len(state.operands):
    return None
  start = _scalar(module.symbols[computation], state.operands[k])
  bsym = module.symbols[body]
  out = _through_bitcasts(bsym, module.root(body))
  if start is None or out.opcode != "tuple" or k >= len(out.operands):
    return None
  update = bsym.get(out.operands[k])
  if update is None or update.opcode not in ("add", "subtract") or len(update.operands) != 2:
    return None
  x, y = update.operands
  if _tuple_index(bsym, x) == k and _scalar(bsym, y) is not None:
    step = _scalar(bsym, y)
  elif update.opcode == "add" and _tuple_index(bsym, y) == k and _scalar(bsym, x) is not None:
    step = _scalar(bsym, x)
  else:
    return None
  step = -step if update.opcode == "subtract" else step
  span = {"LT": limit - start, "LE": limit - start + (1 if step > 0 else 0),
          "GT": start - limit, "GE": start - limit + (1 if step < 0 else 0)}.get(op)
  if span is None or step == 0:
    return None
  return max(0, -(-span // abs(step)))


def analyze(text: str, num_devices: int = 1) -> ModuleCost:
  """Per-instruction costs of one device's program (`compiled.as_text()`), every executed
  instruction counted as often as it runs (while bodies by their trip counts)."""
  module = parse_module(text)
  ops: list[OpCost] = []
  loops: list[Loop] = []
  uncosted: list[OpCost] = []
  seen: set[tuple[str, float]] = set()

  def visit(computation: str, count: float) -> None:
    if (computation, count) in seen:
      return
    seen.add((computation, count))
    symbols = module.symbols[computation]
    for instr in module.computations[computation]:
      op = instr.opcode
      if op == "while":
        trip = _trip_count(module, computation, instr)
        body = (instr.attr("body") or "").lstrip("%")
        cond = (instr.attr("condition") or "").lstrip("%")
        loops.append(Loop(instr.name, computation, trip, count * (trip or 1)))
        if body in module.computations:
          visit(body, count * (trip or 1))
        if cond in module.computations:
          visit(cond, count * ((trip + 1) if trip else 1))
        continue
      if op in ("call", "conditional", "async-start"):
        for c in instr.called:
          if c in module.computations:
            visit(c, count)
        continue
      cost = _op_cost(module, computation, symbols, instr, num_devices)
      if cost is None:
        continue
      cost.count = count
      ops.append(cost)
      if cost.note == "uncosted":
        uncosted.append(cost)

  visit(module.entry, 1.0)
  _inherit_origins(module, ops)
  return ModuleCost(ops, loops, uncosted)


def _op_cost(module: Module, computation: str, symbols: Mapping[str, Instr], instr: Instr,
             num_devices: int) -> Optional[OpCost]:
  op = instr.opcode
  if op in _NO_TRAFFIC:
    return None
  operands = [symbols[o] for o in instr.operands if o in symbols]
  operand_arrays = [a for src in operands for a in src.shape]
  spaces: Spaces = {}
  work = instruction_work(module, computation, instr)
  note = ""
  ici = 0.0
  base = op.removesuffix("-start").removesuffix("-done")
  if op == "fusion":
    fused = instr.called[0] if instr.called else ""
    for k, src in enumerate(operands):
      for a in src.shape:
        nbytes = _parameter_read(module, fused, k, a) if len(src.shape) == 1 else a.nbytes
        _add(spaces, a, nbytes)
    for k, a in enumerate(instr.shape):
      _add(spaces, a, _output_written(module, fused, k, a))
  elif op == "copy-start":
    for a in operand_arrays:
      _add(spaces, a)
    if instr.shape:
      _add(spaces, instr.shape[0])  # destination (the tuple is dest, source, context)
  elif op == "slice-start":
    # ((operand), result, context): the slice is read where the operand lives
    src = operand_arrays[0] if operand_arrays else None
    result = instr.shape[1] if len(instr.shape) > 1 else instr.shape[0]
    if src is not None:
      _add(spaces, src, result.size * DTYPE_BYTES.get(src.dtype, 4))
    _add(spaces, result)
  elif op in ("dynamic-slice", "slice"):
    if operand_arrays:
      _add(spaces, operand_arrays[0], instr.shape[0].nbytes)
    _add(spaces, instr.shape[0])
  elif op == "dynamic-update-slice":
    update = operand_arrays[1] if len(operand_arrays) > 1 else instr.shape[0]
    _add(spaces, update)
    _add(spaces, instr.shape[0], update.nbytes)
  elif base in _COLLECTIVES:
    n = group_size(instr, num_devices)
    if op.endswith("-done"):
      for a in instr.shape:
        _add(spaces, a)
    else:
      for a in operand_arrays:
        _add(spaces, a)
      if not op.endswith("-start"):
        for a in instr.shape:
          _add(spaces, a)
      size_in = sum(a.nbytes for a in operand_arrays)
      size_out = (sum(a.nbytes for a in instr.shape) if not op.endswith("-start")
                  else size_in * (n if base == "all-gather" else 1))
      ici = ici_bytes(base, size_in, size_out, n)
  elif op == "custom-call":
    target = (instr.attr("custom_call_target") or "").strip('"')
    if target in _NO_TRAFFIC_TARGETS:
      return None
    known = custom_call_cost(instr, operand_arrays)
    if known is not None:
      work = Work(flops=known[0], matmul_flops=known[0])
      spaces[HBM] = known[1]
      note = f"kernel cost: {target}"
    else:
      for a in operand_arrays + list(instr.shape):
        _add(spaces, a)
      if target not in _NO_FLOP_TARGETS:
        note = "uncosted"
  else:
    for a in operand_arrays:
      _add(spaces, a)
    for a in instr.shape:
      _add(spaces, a)
  shape = str(instr.shape[0]) if len(instr.shape) == 1 else (
      "(" + ", ".join(map(str, instr.shape[:3])) + (", ...)" if len(instr.shape) > 3 else ")"))
  return OpCost(name=instr.name, opcode=op, computation=computation, op_name=instr.op_name,
                shape=shape, count=1.0, work=work, spaces=spaces, ici=ici,
                origin=origin(instr.op_name, op), note=note)


def _inherit_origins(module: Module, ops: list[OpCost]) -> None:
  """Instructions without op_name metadata (prefetch copies, asynchronous slices of the
  parameters) take the origin of the nearest instruction with one among those whose result
  they move, else among those that use them (a few levels each way, breadth first)."""
  users: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
  for c, body in module.computations.items():
    for i in body:
      for src in i.operands:
        users[(c, src)].append(i.name)

  def search(c: str, start: str, neighbours) -> str:
    seen, frontier = {start}, [start]
    for _ in range(6):
      following = []
      for name in frontier:
        for n in neighbours(c, name):
          instr = module.symbols[c].get(n)
          if n in seen or instr is None:
            continue
          seen.add(n)
          if instr.op_name and origin(instr.op_name, instr.opcode) != "other":
            return origin(instr.op_name, instr.opcode)
          following.append(n)
      frontier = following[:64]
    return "other"

  producers = lambda c, name: module.symbols[c][name].operands if name in module.symbols[c] else ()
  consumers = lambda c, name: users[(c, name)]
  for o in ops:
    if o.origin == "other" and not o.op_name:
      o.origin = search(o.computation, o.name, producers)
      if o.origin == "other":
        o.origin = search(o.computation, o.name, consumers)


def step_cost(cost: ModuleCost, *, model_flops: Optional[float] = None,
              xla_flops: Optional[float] = None, xla_bytes: Optional[float] = None):
  """The roofline's input (`chips.StepCost`) from one module's reading."""
  return chips.StepCost(flops=cost.matmul_flops, other_flops=cost.flops - cost.matmul_flops,
                        hbm_bytes=cost.hbm_bytes, ici_bytes=cost.ici_bytes,
                        model_flops=model_flops, total_bytes=cost.total_bytes,
                        xla_flops=xla_flops, xla_bytes=xla_bytes)


def notes(cost: ModuleCost, step: Optional[object] = None) -> list[str]:
  """What a reader of the figures should know: loops counted per trip, recomputation, kernels
  whose cost came from elsewhere or is unknown."""
  out = []
  counted = [l for l in cost.loops if l.trip_count and l.trip_count > 1
             and any(o.computation != l.computation for o in cost.ops)]
  big = sorted({l.trip_count for l in counted})
  if big:
    out.append(f"  (while loops counted per trip: {len(counted)} loop(s) with trip counts "
               f"{', '.join(map(str, big[:6]))}; XLA's own totals count each body once)")
  model = getattr(step, "model_flops", None)
  if model:
    out.append(f"  (compiled FLOPs / model FLOPs = {cost.flops / model:.2f}: recomputation "
               f"(remat) and elementwise work are not model FLOPs)")
  kernels = sorted({o.note for o in cost.ops if o.note.startswith("kernel cost")})
  if kernels:
    out.append(f"  (custom-call kernels costed by their own estimate or KERNEL_COSTS: "
               f"{', '.join(k.split(': ', 1)[1] for k in kernels)})")
  if cost.uncosted:
    out.append(f"  WARNING: {len(cost.uncosted)} custom call(s) carry no cost estimate: their "
               f"FLOPs are missing from these figures ("
               + ", ".join(sorted({o.name for o in cost.uncosted})[:5]) + ")")
  return out


# --------------------------------------------------------------------------------------------
# Printing.
# --------------------------------------------------------------------------------------------
def _short_op_name(op_name: str, width: int = 64) -> str:
  name = re.sub(r"^jit\([^)]*\)/", "", op_name)
  return name if len(name) <= width else "..." + name[-(width - 3):]


def op_kind(o: OpCost) -> tuple[str, str, str, str]:
  """What an instruction computes, the same for every block of a stack: (origin, opcode,
  output shape, op_name with block / layer indices replaced by *)."""
  name = re.sub(r"(block|layers|adaptor|rel_pos_bias)(_?)\d+", r"\1\2*", o.op_name)
  name = re.sub(r"\.\d+$", "", name) or o.name.split(".")[0]
  return o.origin, o.opcode, o.shape, name


@dataclasses.dataclass
class Group:
  kind: tuple[str, str, str, str]
  flops: float = 0.0
  hbm: float = 0.0
  total: float = 0.0
  count: float = 0.0


def groups(cost: ModuleCost) -> list[Group]:
  """The instructions summed by `op_kind` (a stack's 12 copies of one fusion are one row)."""
  out: dict[tuple, Group] = {}
  for o in cost.ops:
    g = out.setdefault(op_kind(o), Group(op_kind(o)))
    g.flops += o.work.flops * o.count
    g.hbm += o.hbm * o.count
    g.total += o.total_bytes * o.count
    g.count += o.count
  return list(out.values())


def breakdown(cost: ModuleCost, top: int = 15) -> str:
  """The table `--breakdown` prints: totals per origin, then the costliest kinds of instruction
  (the same op in every block summed) by HBM bytes and by FLOPs."""
  flops, hbm, total = cost.flops, cost.hbm_bytes, cost.total_bytes
  lines = [f"where the step's work goes (per chip; this module's instructions, loops counted "
           f"per trip): {flops / 1e12:.3f} TFLOP, HBM {hbm / 1e9:.2f} GB, all memory spaces "
           f"{total / 1e9:.2f} GB",
           f"  {'origin':<18}{'TFLOP':>9}{'%':>5}{'HBM GB':>9}{'%':>5}{'all GB':>9}{'ops':>9}"]
  for name, row in cost.by_origin().items():
    if not row["ops"]:
      continue
    lines.append(f"  {name:<18}{row['flops'] / 1e12:9.3f}{_pct(row['flops'], flops):>5}"
                 f"{row['hbm'] / 1e9:9.2f}{_pct(row['hbm'], hbm):>5}{row['bytes'] / 1e9:9.2f}"
                 f"{row['ops']:9.0f}")
  rows = groups(cost)
  for attr, label, scale, unit, whole in (("hbm", "HBM bytes", 1e9, "GB", hbm),
                                          ("flops", "FLOPs", 1e12, "TF", flops)):
    lines += ["", f"  top {top} by {label}: each row one kind of instruction summed over the "
                  f"blocks that repeat it (n: executions per step)",
              f"  {unit:>8}{'%':>5}  {'origin':<16}{'opcode':<13}{'n':>5}  {'output':<30}op_name"]
    for g in sorted(rows, key=lambda g: getattr(g, attr), reverse=True)[:top]:
      value = getattr(g, attr)
      if not value:
        break
      origin_, opcode, shape, name = g.kind
      shape = shape if len(shape) <= 29 else shape[:26] + "..."
      lines.append(f"  {value / scale:8.3f}{_pct(value, whole):>5}  {origin_:<16}{opcode:<13}"
                   f"{g.count:5.0f}  {shape:<30}{_short_op_name(name)}")
  unknown = [l for l in cost.loops if l.trip_count is None]
  if unknown:
    lines.append(f"  ({len(unknown)} while loop(s) with a data-dependent trip count counted "
                 f"once: {', '.join(l.name for l in unknown[:4])})")
  return "\n".join(lines)


def _pct(part: float, whole: float) -> str:
  return f"{part / whole:.0%}" if whole else "-"


def _main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("hlo", help="an HLO text file (aot --save_hlo)")
  parser.add_argument("--chip", default=None, help=f"one of {sorted(chips.CHIPS)}")
  parser.add_argument("--top", type=int, default=15)
  parser.add_argument("--devices", type=int, default=None,
                      help="devices of the program (collectives without replica groups)")
  args = parser.parse_args(argv)
  with open(args.hlo) as fh:
    text = fh.read()
  xla = {}
  try:
    with open(args.hlo + ".json") as fh:
      xla = json.load(fh)
  except FileNotFoundError:
    pass
  devices = args.devices or math.prod((xla.get("mesh") or {"d": 1}).values())
  cost = analyze(text, devices)
  step = step_cost(cost, model_flops=xla.get("model_flops"), xla_flops=xla.get("flops"),
                   xla_bytes=xla.get("bytes accessed"))
  print(chips.roofline_table(step, target=args.chip))
  print("\n".join(notes(cost, step)))
  print()
  print(breakdown(cost, args.top))


if __name__ == "__main__":
  _main(sys.argv[1:])
