#!/usr/bin/env python3
"""Prints the side-by-side table of docs/BENCHMARKS.md from criterion's results.

Run after `cargo bench --bench crdt`:  python3 benches/report.py
Reads target/criterion/<group>/<function>/new/estimates.json (median point
estimates) and target/criterion/encoded_sizes.json.
"""
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def median_ns(group, function):
    for estimates in sorted((ROOT / group).glob(f"{function}/**/new/estimates.json")):
        return json.loads(estimates.read_text())["median"]["point_estimate"]
    return None


def show(ns):
    if ns is None:
        return "n/a"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def main():
    groups = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "report")
    print("| workload | ractor_replicated | crdts 7.3 | crdts / ours |")
    print("|---|---|---|---|")
    for group in groups:
        ours, theirs = median_ns(group, "ractor_replicated"), median_ns(group, "crdts")
        ratio = f"{theirs / ours:.2f}×" if ours and theirs else "n/a"
        print(f"| `{group}` | {show(ours)} | {show(theirs)} | {ratio} |")
    sizes_file = ROOT / "encoded_sizes.json"
    if sizes_file.exists():
        print()
        print("| encoded size (rmp-serde) | ractor_replicated | crdts 7.3 | crdts / ours |")
        print("|---|---|---|---|")
        for name, pair in sorted(json.loads(sizes_file.read_text()).items()):
            ours, theirs = pair["ractor_replicated"], pair["crdts"]
            print(f"| `{name}` | {ours} B | {theirs} B | {theirs / ours:.2f}× |")


if __name__ == "__main__":
    main()
