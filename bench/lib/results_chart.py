#!/usr/bin/env python3
"""Draw bench/run.sh's summary as an SVG bar chart (standard library only).

    results_chart.py DATA.tsv OUT.svg [TITLE]

DATA.tsv: one line per system, tab-separated: name, max requests/s (median), p99 latency in ms at the fixed
rate (median); "-" for a missing value. Two panels side by side: throughput (higher is better) and p99 (lower
is better), one horizontal bar per system; Sluice's bars are highlighted.
"""
import html
import sys

BAR_H, GAP, LABEL_W, PANEL_W, PAD = 22, 8, 90, 360, 16
TOP = 64


def num(s):
    try:
        return float(s)
    except ValueError:
        return None


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "req/s":
        return f"{v:,.0f} req/s"
    return f"{v:.2f} ms"


def panel(x0, title, rows, unit):
    vals = [v for _, v in rows if v is not None]
    top = max(vals) if vals else 1.0
    out = [f'<text x="{x0 + LABEL_W}" y="{TOP - 14}" class="h">{html.escape(title)}</text>']
    for i, (name, v) in enumerate(rows):
        y = TOP + i * (BAR_H + GAP)
        out.append(f'<text x="{x0 + LABEL_W - 8}" y="{y + BAR_H * 0.7:.1f}" text-anchor="end">{html.escape(name)}</text>')
        if v is None:
            out.append(f'<text x="{x0 + LABEL_W + 4}" y="{y + BAR_H * 0.7:.1f}" class="na">n/a</text>')
            continue
        w = max(1.0, (PANEL_W - 90) * v / top) if top > 0 else 1.0
        cls = "bar s" if name.startswith("sluice") else "bar"
        out.append(f'<rect x="{x0 + LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}" class="{cls}"/>')
        out.append(f'<text x="{x0 + LABEL_W + w + 4:.1f}" y="{y + BAR_H * 0.7:.1f}">{fmt(v, unit)}</text>')
    return out


def main():
    data, out = sys.argv[1], sys.argv[2]
    title = sys.argv[3] if len(sys.argv) > 3 else "bench/run.sh"
    rows = []
    with open(data, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3 and parts[0]:
                rows.append((parts[0], num(parts[1]), num(parts[2])))
    width = 2 * (LABEL_W + PANEL_W) + 3 * PAD
    height = TOP + len(rows) * (BAR_H + GAP) + 28
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        "<style>.h{font-weight:bold;font-size:13px}.bar{fill:#8da0cb}.s{fill:#fc8d62}.na{fill:#888}"
        ".t{font-size:14px;font-weight:bold}.f{fill:#666;font-size:11px}</style>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{PAD}" y="22" class="t">{html.escape(title)}</text>',
    ]
    svg += panel(PAD, "max requests/s, plain (higher is better)", [(n, r) for n, r, _ in rows], "req/s")
    svg += panel(2 * PAD + LABEL_W + PANEL_W, "p99 at a fixed rate, plain (lower is better)",
                 [(n, p) for n, _, p in rows], "ms")
    svg.append(f'<text x="{PAD}" y="{height - 8}" class="f">medians over the repetitions; '
               "1 worker/thread per proxy, pinned to one CPU; see latest.md</text>")
    svg.append("</svg>")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(svg) + "\n")


main()
