#!/usr/bin/env python3
"""Draw the benchmark results as figures for the documentation site.

    python3 benchmarks/plot.py SOURCE... [--out DIR] [--format svg|png]

Each SOURCE is a results file that ``run.py`` saved (``results/*.json``: its
``summary`` rows are used) or a markdown report as ``run.py`` prints it
(``results/*.md``, or ``benchmarks/README.md``, which quotes one).  Rows of
a later source replace those of an earlier one for the same metric and
server.  ``SOURCE:metric,metric`` takes only those metrics from it.  One
figure is written per group of metrics that has data:

    throughput.svg  messages/s and MB/s per server and workload
    cpu.svg         the server's own CPU time per message or per MB
    latency.svg     greeting and EHLO round-trip times
    memory.svg      RSS per idle session, after the greeting and after EHLO
    sessions.svg    concurrent idle sessions held

The site's figures (docs/figures/bench/) are made with::

    python3 benchmarks/plot.py benchmarks/README.md \\
        benchmarks/published/20261201T110331Z-memory.json:memory,memory_ehlo \\
        --out docs/figures/bench

(the full run that README.md's main table quotes, and the run of its section
"Idle sessions after EHLO").  Bars are medians, whiskers the min-max of the
repeated runs; the scales are linear, so a tiny bar is a tiny number.

Needs matplotlib (``pip install matplotlib``); the package does not.
"""

import argparse
import json
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import CPU_UNITS, METRICS  # noqa: E402  (the runner's own metric table)

Row = dict  # one summary row, as run.py's summarize() makes them

# figure id -> (title, [(metric, panel title, use the CPU figures)], servers left out)
FIGURES = {
    "throughput": ("Throughput (higher is better)", [
        ("seq", "1 session, 1 KiB messages: msg/s", False),
        ("par20", "20 parallel sessions: msg/s", False),
        ("par100", "100 parallel sessions: msg/s", False),
        ("big", "10 MiB messages: MB/s", False),
    ], ()),
    "cpu": ("Server CPU time per unit of work (lower is better)", [
        ("seq", "1 session: µs per message", True),
        ("par20", "20 parallel sessions: µs per message", True),
        ("par100", "100 parallel sessions: µs per message", True),
        ("big", "10 MiB messages: ms per MB", True),
    ], ()),
    "latency": ("Latency, ms (lower is better)", [
        ("greet", "connect to the 220 greeting", False),
        ("ehlo", "EHLO round trip", False),
        ("busy_greet", "greeting with 1,000 idle sessions open", False),
    ], ()),
    "memory": ("RSS per idle session, KiB (lower is better)", [
        ("memory", "after the greeting", False),
        ("memory_ehlo", "after EHLO", False),
    ], ("smtp-sink",)),  # ~130 KiB, preallocated: it would flatten the rest
    "sessions": ("Concurrent idle sessions held (higher is better)", [
        ("maxconn", "sessions open and greeted at once", False),
    ], ()),
}

FAMILY_COLOURS = {"compat": "#1f6fb4", "stdlib": "#8c8c8c", "aiosmtpd": "#e08a1e",
                  "smtp-sink": "#3a9d4a"}
_HEADING = re.compile(r"^(?P<label>.*), (?P<unit>\S+) \((?P<better>higher|lower) is better\)$")
_LABELS = {label: metric for metric, (label, _unit, _higher) in METRICS.items()}


def rows_from_json(path: str) -> List[Row]:
    with open(path, encoding="utf-8") as fh:
        return list(json.load(fh)["summary"])


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def rows_from_markdown(path: str) -> List[Row]:
    """The rows of every table in run.py's report format found in *path*."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 8:
                continue
            heading = _HEADING.match(cells[0])
            if heading is None or heading.group("label") not in _LABELS:
                continue
            metric = _LABELS[heading.group("label")]
            try:
                median = _number(cells[2].split()[0])
                low, high = (_number(v) for v in cells[3].split("-", 1))
            except ValueError:  # "failed"
                continue
            row = {"metric": metric, "server": cells[1], "median": median,
                   "min": low, "max": high, "n": int(cells[4])}
            if cells[6] != "-":
                row["cpu"] = {"median": _number(cells[6].split()[0]),
                              "unit": CPU_UNITS.get(metric, "")}
            rows.append(row)
    return rows


def load(sources: List[str]) -> Dict[Tuple[str, str], Row]:
    table: Dict[Tuple[str, str], Row] = {}
    for source in sources:
        path, _colon, wanted = source.partition(":")
        metrics = set(wanted.split(",")) if wanted else None
        rows = rows_from_json(path) if path.endswith(".json") else rows_from_markdown(path)
        if metrics is not None:
            rows = [row for row in rows if row["metric"] in metrics]
        if not rows:
            raise SystemExit("plot.py: no results found in %s" % source)
        for row in rows:
            if "median" in row:
                table[row["metric"], row["server"]] = row
    return table


def family(server: str) -> str:
    return server.split("-")[0] if not server.startswith("smtp-sink") else "smtp-sink"


def _value(row: Row, cpu: bool) -> Optional[Tuple[float, float, float]]:
    if cpu:
        data = row.get("cpu")
        if not data or "median" not in data:
            return None
        return data["median"], data.get("min", data["median"]), data.get("max", data["median"])
    return row["median"], row["min"], row["max"]


def _label(value: float) -> str:
    if value >= 100:
        return "{:,.0f}".format(value)
    if value >= 10:
        return "%.1f" % value
    return "%.2f" % value


def draw(figure_id: str, table: Dict[Tuple[str, str], Row], out: str, fmt: str) -> Optional[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title, panels, left_out = FIGURES[figure_id]
    panels = [p for p in panels
              if any(m == p[0] and _value(r, p[2]) for (m, _s), r in table.items())]
    if not panels:
        return None
    servers = []
    for metric, _title, _cpu in panels:
        for (m, server) in table:
            if m == metric and server not in servers and server not in left_out:
                servers.append(server)
    columns = 2 if len(panels) > 1 else 1
    lines = (len(panels) + columns - 1) // columns
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "smtpd_compat",
                         "font.size": 9})
    fig, axes = plt.subplots(lines, columns, squeeze=False,
                             figsize=(8.0 if columns == 2 else 5.6,
                                      0.5 + lines * (0.24 * len(servers) + 0.8)))
    for index, (metric, panel_title, cpu) in enumerate(panels):
        ax = axes[index // columns][index % columns]
        names, medians, errors, colours = [], [], [[], []], []
        for server in servers:
            row = table.get((metric, server))
            value = _value(row, cpu) if row else None
            names.append(server)
            if value is None:
                medians.append(0)
                errors[0].append(0)
                errors[1].append(0)
                colours.append("white")
                continue
            median, low, high = value
            medians.append(median)
            errors[0].append(max(0.0, median - low))
            errors[1].append(max(0.0, high - median))
            colours.append(FAMILY_COLOURS.get(family(server), "#555555"))
        positions = list(range(len(names)))
        ax.barh(positions, medians, xerr=errors, color=colours,
                error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
        ax.set_yticks(positions)
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        ax.set_title(panel_title, fontsize=9, loc="left")
        ends = [m + e for m, e in zip(medians, errors[1])]
        top = max(ends) if ends else 1
        for position, median, end in zip(positions, medians, ends):
            if median:
                ax.text(end + top * 0.02, position, _label(median), va="center", fontsize=8)
        ax.set_xlim(0, top * 1.22)
        ax.spines[["top", "right"]].set_visible(False)
        if index % columns:
            ax.set_yticklabels([])
    for index in range(len(panels), lines * columns):
        axes[index // columns][index % columns].set_visible(False)
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "%s.%s" % (figure_id, fmt))
    # No timestamp in the file: the same results give the same bytes.
    fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None,
                dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="results JSON or markdown report of run.py")
    parser.add_argument("--out", default=os.path.join(HERE, "results"),
                        help="directory for the figures (default: benchmarks/results)")
    parser.add_argument("--format", choices=("svg", "png"), default="svg")
    args = parser.parse_args(argv)
    table = load(args.sources)
    for figure_id in FIGURES:
        path = draw(figure_id, table, args.out, args.format)
        if path:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
