"""Comparison tables and charts from bench results: boards × models × precisions.

Reads what `qcompile bench --json` writes, local or remote, one board or many
(``{"boards": [...]}``), and lists of such results. Every result becomes one row; a row
without a model/precision/board (a local bench file) is labelled from the file name and
"local". The table and chart answer the questions that come up once several boards are
measured: which board is fastest for a model, and what int8 buys over fp32 on each.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile

from .errors import InputError

ROW_KEYS = ("model", "precision", "board", "rpc_key", "target", "threads", "repeat",
            "median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "source")
_STAT_KEYS = ("median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms")


def result_rows(doc, source: str = "", defaults: dict | None = None) -> list[dict]:
    """Flatten one bench document (a result, {"boards": [...]}, or a list) into report rows."""
    defaults = dict(defaults or {})
    if isinstance(doc, list):
        return [row for item in doc for row in result_rows(item, source, defaults)]
    if not isinstance(doc, dict):
        return []
    if isinstance(doc.get("boards"), list):
        shared = {k: doc[k] for k in ("model", "precision", "target", "rpc_key") if doc.get(k) is not None}
        return [row for item in doc["boards"] for row in result_rows(item, source, {**defaults, **shared})]
    if "median_ms" not in doc:
        return []
    row = {k: doc.get(k, defaults.get(k)) for k in ROW_KEYS}
    row["board"] = doc.get("board") or defaults.get("board") or "local"
    row["model"] = row["model"] or (os.path.splitext(os.path.basename(source))[0] if source else "model")
    row["precision"] = row["precision"] or "?"
    row["source"] = source
    return [row]


def load_results(paths) -> list[dict]:
    """Rows from every file (bench --json, or bench --csv); a missing or unreadable file is an InputError."""
    rows = []
    for path in paths:
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such result file")
        found = _load_csv(path) if path.endswith(".csv") else result_rows(_load_json(path), path)
        if not found:
            raise InputError(f"{path}: no bench results in it (expected what 'qcompile bench --json/--csv' writes)")
        rows.extend(found)
    return rows


def _load_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a JSON result file ({err})") from None


def _load_csv(path: str) -> list[dict]:
    try:
        with open(path, newline="") as f:
            raw = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: not a CSV result file ({err})") from None
    rows = []
    for r in raw:
        if not r.get("median_ms"):
            continue
        try:
            doc = {k: (float(v) if k in _STAT_KEYS else int(v) if k in ("threads", "repeat") and v else v or None)
                   for k, v in r.items() if k in ROW_KEYS}
        except ValueError as err:
            raise InputError(f"{path}: bad number in a result row ({err})") from None
        rows.extend(result_rows(doc, path))
    return rows


def speedups(rows: list[dict]) -> dict[int, float]:
    """{row index: fp32 median / this median} for rows whose model+board also has an fp32 row."""
    fp32 = {(r["model"], r["board"], r["threads"]): r["median_ms"] for r in rows if r["precision"] == "fp32"}
    out = {}
    for i, r in enumerate(rows):
        base = fp32.get((r["model"], r["board"], r["threads"]))
        if base and r["precision"] != "fp32" and r["median_ms"]:
            out[i] = base / r["median_ms"]
    return out


def series_labels(rows: list[dict]) -> list[str]:
    """The board of each row, plus its file's name where one board has several results for the same model."""
    from collections import Counter

    key = lambda r: (r["board"], r["model"], r["precision"], r["threads"])  # noqa: E731
    counts = Counter(key(r) for r in rows)
    return [f"{r['board']} [{os.path.splitext(os.path.basename(r['source'] or ''))[0] or '?'}]"
            if counts[key(r)] > 1 else str(r["board"]) for r in rows]


def sort_rows(rows: list[dict]) -> list[dict]:
    order = {"fp32": 0, "int16": 1, "int8": 2}
    return sorted(rows, key=lambda r: (str(r["model"]), str(r["board"]), order.get(r["precision"], 9),
                                       str(r["precision"])))


def format_table(rows: list[dict]) -> str:
    rows = sort_rows(rows)
    sp = speedups(rows)
    labels = series_labels(rows)
    head = ("model", "precision", "board", "target", "thr", "median ms", "p90 ms", "p99 ms", "min ms", "vs fp32")
    body = [(str(r["model"]), str(r["precision"]), labels[i], str(r["target"] or "-"), str(r["threads"] or "-"),
             f"{r['median_ms']:.4f}", _fmt(r["p90_ms"]), _fmt(r["p99_ms"]), _fmt(r["min_ms"]),
             f"{sp[i]:.2f}x" if i in sp else "-") for i, r in enumerate(rows)]
    widths = [max(len(h), *(len(b[j]) for b in body)) if body else len(h) for j, h in enumerate(head)]
    left = 4  # text columns are left-aligned, numbers right-aligned

    def line(cells):
        return "  ".join(c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head)] + [line(b) for b in body])


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_KEYS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in ROW_KEYS})
    return buf.getvalue()


def write_text_atomic(path: str, text: str):
    """Write a file via a temp sibling and rename, so a reader never sees half of it."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_csv_atomic(path: str, rows: list[dict]):
    write_text_atomic(path, to_csv(rows))


def plot_png(rows: list[dict], path: str, title: str = "median latency (ms), lower is better"):
    """A grouped bar chart: one group per model × precision, one bar per board, whiskers to p90."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sort_rows(rows)
    labels = series_labels(rows)
    groups = list(dict.fromkeys(f"{r['model']}\n{r['precision']}" for r in rows))
    boards = list(dict.fromkeys(labels))
    width = 0.8 / max(1, len(boards))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) * max(1, len(boards)) ** 0.5 + 2), 4.2))
    for b_i, board in enumerate(boards):
        xs, ys, errs = [], [], []
        for g_i, g in enumerate(groups):
            match = [r for r, lab in zip(rows, labels) if lab == board and f"{r['model']}\n{r['precision']}" == g]
            if match:
                r = match[0]
                xs.append(g_i + (b_i - (len(boards) - 1) / 2) * width)
                ys.append(r["median_ms"])
                errs.append(max(0.0, (r.get("p90_ms") or r["median_ms"]) - r["median_ms"]))
        bars = ax.bar(xs, ys, width * 0.95, yerr=[[0] * len(errs), errs], capsize=3, label=board)
        ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title(title, fontsize=10)
    ax.legend(title="board", fontsize=8, title_fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=d)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
