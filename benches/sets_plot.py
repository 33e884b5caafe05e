#!/usr/bin/env python3
"""Regenerates the plot of docs/BENCHMARKS.md "One add to a large set".

One command, from the repository's root:

    python3 benches/sets_plot.py

builds the release binaries, runs `target/release/sets` (3 loopback
processes; a few minutes), keeps its JSON in docs/img/sets.json and draws
docs/img/sets.svg: bytes sent per add and per peer, spread latency (p50 and
p99) and CPU per add on a receiver, against the set's size. With a JSON file
as argument it only draws that file.
"""
import json
import math
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"


def run_benchmark():
    subprocess.run(["cargo", "build", "--release", "-p", "multi-node-tests"], cwd=ROOT, check=True)
    result = subprocess.run([str(ROOT / "target" / "release" / "sets")], cwd=ROOT, check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout)


def panel(x0, title, unit, sizes, series):
    """One log-log panel 300 wide, 220 high, at x offset x0."""
    width, height, left, top = 300, 220, 55, 30
    plot_w, plot_h = width - left - 15, height - top - 40
    values = [v for _, points, _ in series for v in points if v > 0]
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    if hi <= lo:
        hi = lo * 10
    xs = [math.log10(s) for s in sizes]
    x_lo, x_hi = min(xs) - 0.2, max(xs) + 0.2

    def px(size):
        return x0 + left + (math.log10(size) - x_lo) / (x_hi - x_lo) * plot_w

    def py(value):
        value = max(value, lo)
        return top + plot_h - (math.log10(value) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * plot_h

    out = [f'<text x="{x0 + width / 2}" y="16" text-anchor="middle" font-weight="bold">{title}</text>',
           f'<rect x="{x0 + left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    decade = lo
    while decade <= hi:
        y = py(decade)
        out.append(f'<line x1="{x0 + left}" x2="{x0 + left + plot_w}" y1="{y}" y2="{y}" stroke="#eee"/>')
        out.append(f'<text x="{x0 + left - 4}" y="{y + 4}" text-anchor="end">{decade:g}</text>')
        decade *= 10
    for size in sizes:
        out.append(f'<text x="{px(size)}" y="{top + plot_h + 16}" text-anchor="middle">{size:,}</text>')
    out.append(f'<text x="{x0 + left + plot_w / 2}" y="{top + plot_h + 32}" text-anchor="middle">elements in the set</text>')
    out.append(f'<text x="{x0 + 12}" y="{top + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 {x0 + 12} {top + plot_h / 2})">{unit}</text>')
    for name, points, colour in series:
        path = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in zip(sizes, points))
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for s, v in zip(sizes, points):
            out.append(f'<circle cx="{px(s):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}"/>')
    for i, (name, _, colour) in enumerate(series):
        out.append(f'<text x="{x0 + left + 6}" y="{top + 14 + 14 * i}" fill="{colour}">{name}</text>')
    return out


def draw(report):
    sizes = [s["elements"] for s in report["sizes"]]
    bytes_per_add = [s["sent_bytes_per_add_per_peer"] for s in report["sizes"]]
    p50 = [s["spread_us"]["p50"] / 1000 for s in report["sizes"]]
    p99 = [s["spread_us"]["p99"] / 1000 for s in report["sizes"]]
    value = [s["value_bytes"] for s in report["sizes"]]
    cpu = [s["cpu_us_per_add"]["receiver"] for s in report["sizes"]]
    cpu_listening = [s["cpu_us_per_add"]["receiver_with_listener"] for s in report["sizes"]]
    parts = []
    parts += panel(0, "bytes per add, per peer", "bytes", sizes,
                   [("sent per add", bytes_per_add, "#1f77b4"), ("whole value", value, "#bbbbbb")])
    parts += panel(300, "spread latency", "ms", sizes, [("p50", p50, "#2ca02c"), ("p99", p99, "#d62728")])
    parts += panel(600, "receiver CPU per add", "µs", sizes, [("receiver", cpu, "#9467bd"), ("with a listener", cpu_listening, "#8c564b")])
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="900" height="230" '
           'font-family="sans-serif" font-size="11">\n<rect width="900" height="230" fill="white"/>\n'
           + "\n".join(parts) + "\n</svg>\n")
    (OUT / "sets.svg").write_text(svg)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    if len(sys.argv) > 1:
        report = json.loads(pathlib.Path(sys.argv[1]).read_text())
    else:
        report = run_benchmark()
        (OUT / "sets.json").write_text(json.dumps(report, indent=2) + "\n")
    draw(report)
    print(f"wrote {OUT / 'sets.svg'}")


if __name__ == "__main__":
    main()
