r"""The reliability suite: what pods do to a run, done for real on runlocal MaskAlign runs.

  python -m mim_jax.tools.reliability --teacher DIR --out DIR [--kills 10] [--steps 24]

Every scenario runs `python -m mim_jax.main` in subprocesses and compares with a straight run of
the same config (bit-identical final checkpoint, one metrics record per step):

  kills          SIGKILL at random moments (checkpoints every 2 steps, so some land during a
                 write), resumed each time
  corrupt/*      the newest checkpoint truncated, garbled, or without state/_METADATA
  images/cache=* corrupt images in the data; stopped halfway and resumed (data.cache off / on)
  disk_full      a checkpoint write on a full file system (small tmpfs), then space freed
  peer_killed    one of two processes killed: the survivor's exit and the time it took
  bad_input/*    empty workdir, workdir under a file, read-only workdir, batch vs mesh

It prints a table of what it tried and what happened; exit status 1 when a row failed. A row
that cannot run here (no tmpfs mount) says so and is skipped. `tests/test_reliability.py` runs it
under the `reliability` marker.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs/maskalign_b16_clip_b16.py") + ":runlocal=True"


class Suite:
  """Runs of one config in workdirs under `out`; rows of (scenario, tried, happened, ok)."""

  def __init__(self, teacher: str, out: str, steps: int, seed: int):
    self.teacher, self.out, self.steps = teacher, out, steps
    self.rng = random.Random(seed)
    self.rows: list[tuple[str, str, str, Optional[bool]]] = []
    self.env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3",
                    JAX_COMPILATION_CACHE_DIR=os.path.join(out, "jax_cache"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    self._straight: dict[str, str] = {}

  # ------------------------------------------------------------------------------------------
  def args(self, workdir: str, *extra: str, steps: Optional[int] = None) -> list[str]:
    return [sys.executable, "-m", "mim_jax.main", "--config", CONFIG, "--workdir", workdir,
            f"--config.teacher.spec={self.teacher}",
            f"--config.total_steps={steps or self.steps}", "--config.checkpoint_every=2",
            *extra]

  def run(self, workdir: str, *extra: str, steps: Optional[int] = None, env=None,
          cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(self.args(workdir, *extra, steps=steps), capture_output=True,
                          text=True, cwd=cwd, env=dict(self.env, **(env or {})), timeout=900)

  def start(self, workdir: str, *extra: str, env=None) -> subprocess.Popen:
    return subprocess.Popen(self.args(workdir, *extra), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(self.env, **(env or {})))

  def stop_at(self, workdir: str, records: int, *extra: str,
              sig: int = signal.SIGTERM) -> int:
    """Starts a run of the full length and sends `sig` once it has logged `records` steps
    (SIGTERM: it stops after that step with a checkpoint). Returns its exit status."""
    proc = self.start(workdir, *extra)
    while proc.poll() is None and len(metrics(workdir)) < records:
      time.sleep(0.2)
    if proc.poll() is None:
      os.killpg(proc.pid, sig)
    proc.communicate()
    return proc.returncode

  def straight(self, *extra: str) -> str:
    """Workdir of the uninterrupted run with `extra` overrides (run once)."""
    key = " ".join(extra)
    if key not in self._straight:
      workdir = os.path.join(self.out, f"straight{len(self._straight)}")
      r = self.run(workdir, *extra)
      if r.returncode:
        raise RuntimeError(f"the straight run failed:\n{r.stderr[-3000:]}")
      self._straight[key] = workdir
    return self._straight[key]

  def row(self, name: str, tried: str, happened: str, ok: Optional[bool]) -> None:
    self.rows.append((name, tried, happened, ok))
    print(f"[{'ok' if ok else 'skip' if ok is None else 'FAIL'}] {name}: {happened}",
          flush=True)

  def compare(self, workdir: str, *extra: str) -> tuple[bool, str]:
    """(equal, summary) of `workdir` against the straight run: final checkpoint bit for bit,
    metrics records one per step with equal losses and skipped-image counts."""
    ref = self.straight(*extra)
    a, b = final_arrays(ref), final_arrays(workdir)
    same_arrays = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    rows_ref, rows = metrics(ref), metrics(workdir)
    steps = [r["step"] for r in rows]
    once = len(steps) == len(set(steps)) == self.steps
    keys = ("loss", "data/skipped_images")
    same_metrics = ([[r.get(k) for k in keys] for r in rows] ==
                    [[r.get(k) for k in keys] for r in rows_ref])
    equal = sum(np.array_equal(a[k], b.get(k)) for k in a)
    return same_arrays and once and same_metrics, (
        f"{equal}/{len(a)} arrays equal, {len(rows)} records for {len(set(steps))} steps, "
        f"losses and skipped counts {'equal' if same_metrics else 'DIFFER'}")


def metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


def final_arrays(workdir: str) -> dict[str, np.ndarray]:
  """Every array of the newest checkpoint, keyed by its path (read with orbax, no model)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  root = os.path.join(workdir, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(root) if s.isdigit()) if os.path.isdir(root) else []
  if not steps:
    return {}
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(os.path.join(root, str(steps[-1]), "state"))
  import jax  # pylint: disable=import-outside-toplevel
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def last_line(text: str) -> str:
  lines = text.strip().splitlines()
  return lines[-1] if lines else ""


# --------------------------------------------------------------------------------------------
# Scenarios.
# --------------------------------------------------------------------------------------------
def random_kills(s: Suite, kills: int) -> None:
  workdir = os.path.join(s.out, "kills")
  done = 0
  for _ in range(kills):
    # SIGKILL 1-3 logged steps after the resume point, a random fraction of a step later:
    # during steps, metric writes and (every 2 steps) async checkpoint writes.
    target = len(metrics(workdir)) + s.rng.randint(1, 3)
    proc = s.start(workdir)
    while proc.poll() is None and len(metrics(workdir)) < target:
      time.sleep(0.05)
    if proc.poll() is not None:  # finished first
      break
    time.sleep(s.rng.uniform(0.0, 0.4))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    done += 1
  r = s.run(workdir)
  ok, summary = s.compare(workdir)
  s.row("kills", f"{done} SIGKILLs at random moments, each followed by a resume", summary,
        ok and r.returncode == 0)


def array_files(step_dir: str) -> list[str]:
  """The array data files of a checkpoint step (orbax OCDBT chunks)."""
  return glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)


def truncate(step_dir: str) -> None:
  for f in array_files(step_dir):
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)


def garble(step_dir: str) -> None:
  for f in array_files(step_dir):
    with open(f, "rb") as fh:
      raw = bytearray(fh.read())
    raw[16::5] = bytes(b ^ 0xFF for b in raw[16::5])
    with open(f, "wb") as fh:
      fh.write(bytes(raw))


def drop_metadata(step_dir: str) -> None:
  os.remove(os.path.join(step_dir, "state", "_METADATA"))


def corrupt_checkpoints(s: Suite) -> None:
  last = s.steps
  for name, corrupt in (("truncated", truncate), ("garbled", garble),
                        ("no_metadata", drop_metadata)):
    workdir = os.path.join(s.out, f"corrupt_{name}")
    s.run(workdir)
    corrupt(os.path.join(workdir, "checkpoints", str(last)))
    r = s.run(workdir)  # restores step last - 2, trains the last two steps again
    ok, summary = s.compare(workdir)
    warned = f"Checkpoint step {last} cannot be read" in r.stderr
    aside = os.path.isdir(os.path.join(workdir, "checkpoints", f"corrupt-{last}-0"))
    s.row(f"corrupt/{name}", f"newest checkpoint (step {last}) {name}, run again",
          f"warned={warned}, moved aside={aside}, {summary}",
          ok and warned and aside and r.returncode == 0)


def corrupt_data_dir(source: str, dest: str, every: int = 11) -> int:
  """A copy of the digits TFDS dir whose every `every`-th train image is undecodable bytes
  (the records stay well-formed). Returns how many images were spoiled."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  shutil.copytree(os.path.join(source, "mim_digits"), os.path.join(dest, "mim_digits"))
  spoiled = 0
  for path in glob.glob(os.path.join(dest, "mim_digits", "*", "mim_digits-train.tfrecord*")):
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    with tf.io.TFRecordWriter(path) as w:
      for i, raw in enumerate(records):
        if i % every == 3:
          ex = tf.train.Example.FromString(raw)
          ex.features.feature["image"].bytes_list.value[:] = [b"not an image"]
          raw, spoiled = ex.SerializeToString(), spoiled + 1
        w.write(raw)
  return spoiled


def corrupt_images(s: Suite, data_dir: str) -> None:
  bad_dir = os.path.join(s.out, "tfds_corrupt")
  spoiled = corrupt_data_dir(data_dir, bad_dir)
  for cache in (False, True):
    extra = (f"--config.data.data_dir={bad_dir}", f"--config.data.cache={cache}")
    workdir = os.path.join(s.out, f"images_cache{cache}")
    s.stop_at(workdir, s.steps // 2 + 1, *extra)  # SIGTERM: stops with a checkpoint
    stopped = len(metrics(workdir))
    r = s.run(workdir, *extra)
    ok, summary = s.compare(workdir, *extra)
    skipped = int(metrics(workdir)[-1].get("data/skipped_images", -1))
    s.row(f"images/cache={cache}", f"{spoiled} corrupt images in the data, SIGTERM at step "
          f"{stopped}, resume", f"{skipped} skipped by the end, {summary}",
          ok and r.returncode == 0 and skipped > 0)


def disk_full(s: Suite) -> None:
  mount = os.path.join(s.out, "small_fs")
  os.makedirs(mount, exist_ok=True)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", mount],
                    capture_output=True).returncode:
    s.row("disk_full", "checkpoint write on a full file system", "no tmpfs mount here", None)
    return
  try:
    workdir = os.path.join(mount, "run")
    s.stop_at(workdir, s.steps // 2)
    filler = os.path.join(mount, "filler")
    with open(filler, "wb") as f:  # fill what is left
      try:
        while True:
          f.write(b"\0" * (1 << 20))
          f.flush()
      except OSError:
        pass
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    failed = s.run(workdir)
    after = sorted(x for x in os.listdir(os.path.join(workdir, "checkpoints")) if x.isdigit())
    intact = set(before) <= set(after) and bool(final_arrays(workdir))
    os.remove(filler)
    r = s.run(workdir)
    ok, summary = s.compare(workdir)
    s.row("disk_full", "checkpoint write on a full tmpfs, then space freed",
          f"full: exit {failed.returncode}, earlier checkpoints intact={intact}; freed: "
          f"{summary}", ok and failed.returncode != 0 and intact and r.returncode == 0)
  finally:
    subprocess.run(["umount", "-l", mount], capture_output=True)


def peer_killed(s: Suite, timeout_s: int = 10) -> None:
  workdir = os.path.join(s.out, "two_hosts")
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  env = dict(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
             JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
             MIM_JAX_HEARTBEAT_TIMEOUT_S=str(timeout_s))
  procs = [s.start(workdir, "--distributed", env=dict(env, JAX_PROCESS_ID=str(i)))
           for i in range(2)]
  try:
    deadline = time.time() + 300
    while time.time() < deadline and len(metrics(workdir)) < 3:
      time.sleep(0.5)
    os.killpg(procs[1].pid, signal.SIGKILL)
    killed = time.time()
    _, err = procs[0].communicate(timeout=300)
    took = time.time() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
  line = last_line(err)
  ok = procs[0].returncode == 1 and line.startswith("error:") and took < timeout_s + 15
  s.row("peer_killed", f"SIGKILL process 1 of 2 (heartbeat timeout {timeout_s} s)",
        f"survivor exit {procs[0].returncode} after {took:.0f} s: {line[:90]}...", ok)


def bad_input(s: Suite) -> None:
  base = os.path.join(s.out, "bad_input")
  os.makedirs(os.path.join(base, "cwd"))
  open(os.path.join(base, "file"), "w").close()
  cases: list[tuple[str, str, tuple[str, ...], Callable[[], None]]] = [
      ("empty_workdir", "", (), lambda: None),
      ("under_a_file", os.path.join(base, "file", "run"), (), lambda: None),
      ("batch_vs_mesh", os.path.join(base, "batch"), ("--config.batch_size=12",), lambda: None),
  ]
  expect = {"empty_workdir": "is empty", "under_a_file": "is a file",
            "batch_vs_mesh": "--config.batch_size=12", "read_only": "not writable"}
  ro = os.path.join(base, "ro")
  os.makedirs(ro)
  if not subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro],
                        capture_output=True).returncode:
    cases.append(("read_only", os.path.join(ro, "run"), (), lambda: subprocess.run(
        ["umount", "-l", ro], capture_output=True)))
  else:
    s.row("bad_input/read_only", "read-only workdir", "no read-only mount here", None)
  for name, workdir, extra, cleanup in cases:
    before = sorted(os.listdir(base)) + sorted(os.listdir(os.path.join(base, "cwd")))
    try:
      r = s.run(workdir, *extra, cwd=os.path.join(base, "cwd"),
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    finally:
      cleanup()
    after = sorted(os.listdir(base)) + sorted(os.listdir(os.path.join(base, "cwd")))
    line = last_line(r.stderr)
    ok = (r.returncode != 0 and line.startswith("error:") and expect[name] in line and
          before == after)
    s.row(f"bad_input/{name}", f"--workdir {workdir!r} {' '.join(extra)}".strip(),
          f"{line[:110]}; wrote nothing={before == after}", ok)


def table(rows) -> str:
  head = ("scenario", "tried", "happened", "result")
  body = [(n, t, h, "ok" if ok else "skipped" if ok is None else "FAILED") for n, t, h, ok in rows]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(r) + " |" for r in body]
  return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--teacher", required=True, help="transformers ViT checkpoint directory")
  parser.add_argument("--out", required=True, help="scratch directory (must not exist)")
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--only", default="", help="comma-separated scenario names")
  a = parser.parse_args(argv)
  os.makedirs(a.out)
  s = Suite(os.path.abspath(a.teacher), os.path.abspath(a.out), a.steps, a.seed)
  data_dir = os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
  scenarios = {"kills": lambda: random_kills(s, a.kills), "corrupt": lambda: corrupt_checkpoints(s),
               "images": lambda: corrupt_images(s, data_dir), "disk_full": lambda: disk_full(s),
               "peer_killed": lambda: peer_killed(s), "bad_input": lambda: bad_input(s)}
  only = [x for x in a.only.split(",") if x] or list(scenarios)
  started = time.time()
  for name in only:
    scenarios[name]()
  print(table(s.rows))
  print(f"{len(s.rows)} rows in {time.time() - started:.0f} s")
  return 1 if any(ok is False for *_, ok in s.rows) else 0


if __name__ == "__main__":
  sys.exit(main())
