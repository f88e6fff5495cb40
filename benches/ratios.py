#!/usr/bin/env python3
"""Print each criterion benchmark as a ratio to its group's `baseline`, from one run.

Usage: cargo bench --bench vault && python3 benches/ratios.py [target/criterion]
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
if not root.is_dir():
    sys.exit(f"no criterion results under {root}: run `cargo bench` first")


def mean_ns(bench_dir):
    est = bench_dir / "new" / "estimates.json"
    if not est.is_file():
        return None
    return json.loads(est.read_text())["mean"]["point_estimate"]


def fmt(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.0f} ns"


for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "report"):
    base = mean_ns(group / "baseline")
    if base is None:
        continue
    print(f"{group.name}  (baseline {fmt(base)})")
    for bench in sorted(p for p in group.iterdir() if p.is_dir() and p.name not in ("baseline", "report")):
        ns = mean_ns(bench)
        if ns is not None:
            print(f"  {bench.name:<12} {fmt(ns):>12}   x{ns / base:.2f} of baseline")
