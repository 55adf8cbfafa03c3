#!/usr/bin/env python3
"""lopt against JAX on this machine, measured side by side.

The README's JAX reference figures were measured on another machine. This script runs
the JAX benchmark scripts (scripts/jax: bench_quadratic.py, bench_image_mlp.py) and
lopt's benches (`cargo bench --bench families|image_mlp|gradients`) in alternation,
ROUNDS times, swapping which goes first each round, and prints for every pair of
corresponding cases the ratio JAX median / lopt median of each round, then the median
and range of those ratios. Only ratios from the same round are compared, because these
machines drift by 25% between minutes.

Usage (the Python must have scripts/jax/requirements.txt installed):

    /path/to/venv/bin/python scripts/jax_side_by_side.py [--rounds 3] \
        [--anchors scripts/jax] [--out target/side_by_side.json]

Standard library only; it reads lopt's `bench <id> median_s=...` lines and the JSON
files the anchor scripts write with `--json`.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

# (lopt bench, lopt id, anchor script, anchor key); all per call, per step or per
# instance-step as both sides define them.
PAIRS = [
    ("gradients", "mlp.grad.generated", "bench_image_mlp.py", "a.value_and_grad.per_call"),
    ("families", "seed.batched", "bench_quadratic.py", "seed.jit_vmap.per_call"),
    ("families", "scaled.1024x256x100.loop", "bench_quadratic.py",
     "scaled.1024x256x100.loop.per_call"),
    ("families", "scaled.16384x64x100.loop", "bench_quadratic.py",
     "scaled.16384x64x100.loop.per_call"),
    ("image_mlp", "train_1000", "bench_image_mlp.py", "b.train_scan_1000.per_step"),
    ("image_mlp", "vmap8.train_1000", "bench_image_mlp.py",
     "c.vmap8.train_scan_1000.per_task_step"),
    ("image_mlp", "vmap64.train_1000", "bench_image_mlp.py",
     "c.vmap64.train_scan_1000.per_task_step"),
    # 64 plain f32 instances over the threads, against JAX's vmap of 64.
    ("image_mlp", "serial64.train_1000", "bench_image_mlp.py",
     "c.vmap64.train_scan_1000.per_task_step"),
]

BENCH_LINE = re.compile(r"^bench (\S+) median_s=(\S+) min_s=(\S+) max_s=(\S+) n=(\d+)")


def run_lopt(bench, repo):
  """Medians (seconds) of every `bench` line of `cargo bench --bench <bench>`."""
  out = subprocess.run(["cargo", "bench", "--bench", bench], cwd=repo, check=True,
                       capture_output=True, text=True).stdout
  found = {}
  for line in out.splitlines():
    m = BENCH_LINE.match(line)
    if m:
      found[m.group(1)] = float(m.group(2))
  return found


def run_jax(script, anchors):
  """Medians (seconds) of every timed row of one anchor script."""
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "out.json")
    subprocess.run([sys.executable, script, "--json", path], cwd=anchors, check=True,
                   capture_output=True, text=True)
    with open(path) as f:
      rows = json.load(f)["rows"]
  return {r["key"]: r["median"] for r in rows if "median" in r}


def main():
  here = os.path.dirname(os.path.abspath(__file__))
  repo = os.path.dirname(here)
  p = argparse.ArgumentParser()
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--anchors", default=os.path.join(repo, "scripts", "jax"))
  p.add_argument("--out", default=os.path.join(repo, "target", "side_by_side.json"))
  args = p.parse_args()
  anchors = os.path.abspath(args.anchors)
  benches = sorted({b for b, _, _, _ in PAIRS})
  scripts = sorted({s for _, _, s, _ in PAIRS})
  # Build once, outside the timed rounds.
  subprocess.run(["cargo", "bench", "--no-run"] + [a for b in benches for a in ("--bench", b)],
                 cwd=repo, check=True, capture_output=True)

  rounds = []
  for r in range(args.rounds):
    lopt, jax = {}, {}
    order = ["lopt", "jax"] if r % 2 == 0 else ["jax", "lopt"]
    for side in order:
      if side == "lopt":
        for b in benches:
          print(f"round {r + 1}: cargo bench --bench {b}", flush=True)
          lopt[b] = run_lopt(b, repo)
      else:
        for s in scripts:
          print(f"round {r + 1}: {s}", flush=True)
          jax[s] = run_jax(s, anchors)
    rounds.append({"lopt": lopt, "jax": jax})

  print()
  print(f"{'lopt id':28} {'lopt':>10} {'JAX':>10}  JAX/lopt per round -> median")
  summary = []
  for bench, lid, script, key in PAIRS:
    ratios, lt, jt = [], [], []
    for rd in rounds:
      l, j = rd["lopt"][bench].get(lid), rd["jax"][script].get(key)
      if l is not None and j is not None:
        ratios.append(j / l)
        lt.append(l)
        jt.append(j)
    if not ratios:
      print(f"{lid:28} missing")
      continue
    med = statistics.median(ratios)
    per = ", ".join(f"{x:.1f}" for x in ratios)
    print(f"{lid:28} {statistics.median(lt) * 1e6:8.1f}us {statistics.median(jt) * 1e6:8.1f}us"
          f"  {per} -> {med:.1f}x")
    summary.append({"lopt_id": lid, "jax_key": key, "ratios": ratios,
                    "median_ratio": med, "lopt_s": lt, "jax_s": jt})
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"rounds": rounds, "summary": summary}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
