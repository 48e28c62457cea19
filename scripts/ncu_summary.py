#!/usr/bin/env python3
"""Sums Nsight Compute's per-kernel times (a --csv run with --metrics gpu__time_duration.sum) over the last
decode step of kiln's profile-decode.js (from the last `embed` launch on), by kernel, grid and block.

Usage: python3 scripts/ncu_summary.py ncu.csv
"""
import collections
import csv
import sys


def main():
    rows = list(csv.reader(open(sys.argv[1])))
    header, data = None, []
    for r in rows:
        if r and r[0] == "ID":
            header = r
        elif header and len(r) == len(header):
            data.append(dict(zip(header, r)))
    value = lambda d: float(d["Metric Value"].replace(",", ""))
    starts = [i for i, d in enumerate(data) if d["Kernel Name"].startswith("embed")]
    step = data[starts[-1]:] if starts else data
    by = collections.defaultdict(list)
    for d in step:
        by[(d["Kernel Name"][:48], d["Grid Size"], d["Block Size"])].append(value(d))
    print(f"# {len(step)} kernels, {sum(value(d) for d in step) / 1000:.1f} us in all")
    print("# kernel | grid | block | launches | mean us | total us")
    for (name, grid, block), v in sorted(by.items(), key=lambda kv: -sum(kv[1])):
        print(f"{name} | {grid} | {block} | {len(v)} | {sum(v) / len(v) / 1000:.2f} | {sum(v) / 1000:.1f}")


if __name__ == "__main__":
    main()
