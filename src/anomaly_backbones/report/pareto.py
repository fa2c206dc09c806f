"""The Pareto view: image ROC-AUC against ms/image, one point per run and method.

pareto_front(cost, quality) -> [bool]: the non-dominated points (lower cost, higher quality).
pareto_rows(rows)           -> [dict]: pareto.csv, the front computed within each (dataset, device): a GPU
                               timing and a CPU timing are never on one axis.
plot_pareto(prow, path, title): one PNG per (dataset, device). Colour = backbone family; marker shape =
    method (image-level methods, which have no anomaly map, take their own shapes, hollow with a dashed
    edge); hollow = random init; vertical bars = the 95 % DeLong interval of image ROC-AUC; a red dashed
    ring = timed under load (runs.under_load).
"""
from __future__ import annotations

from pathlib import Path

from .fmt import init_kind, num
from .runs import LOAD_FRACTION


def pareto_front(cost, quality) -> list[bool]:
    """Non-dominated points when minimizing cost and maximizing quality. A point is dominated when
    another is at least as good in both and strictly better in one; equal points are both kept.
    Points with a missing (None/NaN) value are never on the front."""
    pts = [(num(c), num(q)) for c, q in zip(cost, quality)]
    out = []
    for i, (c, q) in enumerate(pts):
        if c is None or q is None:
            out.append(False)
            continue
        dominated = any(c2 is not None and q2 is not None and c2 <= c and q2 >= q and (c2 < c or q2 > q)
                        for j, (c2, q2) in enumerate(pts) if j != i)
        out.append(not dominated)
    return out


LABEL_CHARS = 60   # a point's label in the plot (pareto.csv has the whole variant)


def pareto_rows(rows: list[dict]) -> list[dict]:
    out = []
    for ds, dev in sorted({(r["dataset"], r["device"]) for r in rows}):
        drows = [r for r in rows if r["dataset"] == ds and r["device"] == dev]
        front = pareto_front([r["ms_per_image"] for r in drows], [r["image_auroc"] for r in drows])
        multi_m = len({r["method"] for r in drows}) > 1
        for r, on_front in zip(drows, front):
            label = f"{r['backbone']} ({'random' if r['random_init'] else init_kind(r['init_full'])})"
            if multi_m:
                label += f" {r['method']}"
            if r["variant"]:
                label += f" [{r['variant']}]"
            label = label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1] + "…"
            out.append({"label": label, "backbone": r["backbone"], "family": r["family"], "init": r["init"],
                        "random_init": r["random_init"], "method": r["method"], "level": r["level"],
                        "dataset": ds, "device": dev, "variant": r["variant"], "ms_per_image": r["ms_per_image"],
                        "image_auroc": r["image_auroc"], "image_auroc_lo": r["image_auroc_lo"],
                        "image_auroc_hi": r["image_auroc_hi"], "pixel_auroc": r["pixel_auroc"],
                        "pixel_aupro": r["pixel_aupro"], "load_1m": r["load_1m"], "cpus": r["cpus"],
                        "under_load": r["under_load"], "pareto_front": bool(on_front), "source": r["source"]})
    return out


def _place_labels(fig, ax, pts: list[dict]) -> None:
    """Annotate points, trying a few offsets per label so that labels do not overlap each other."""
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    offsets = [(6, 4, "left"), (6, -12, "left"), (-6, 4, "right"), (-6, -12, "right"), (6, 16, "left"),
               (6, -24, "left"), (-6, 16, "right"), (-6, -24, "right"), (6, 28, "left"), (6, -36, "left")]
    # front points first (they matter most), then from the top left
    for p in sorted(pts, key=lambda p: (not p["pareto_front"], -p["image_auroc"], p["ms_per_image"])):
        best = None
        for dx, dy, ha in offsets:
            t = ax.annotate(p["label"], (p["ms_per_image"], p["image_auroc"]), textcoords="offset points",
                            xytext=(dx, dy), ha=ha, fontsize=8, fontweight="bold" if p["pareto_front"] else "normal",
                            arrowprops=dict(arrowstyle="-", color="0.6", lw=0.5) if abs(dy) > 12 else None)
            bb = t.get_window_extent(renderer).expanded(1.02, 1.1)
            inside = ax.get_window_extent(renderer).contains(bb.x0, bb.y0) and \
                ax.get_window_extent(renderer).contains(bb.x1, bb.y1)
            if inside and not any(bb.overlaps(o) for o in placed):
                best = (t, bb)
                break
            t.remove()
        if best is None:  # every place taken: first choice anyway
            dx, dy, ha = offsets[0]
            t = ax.annotate(p["label"], (p["ms_per_image"], p["image_auroc"]), textcoords="offset points",
                            xytext=(dx, dy), ha=ha, fontsize=8, fontweight="bold" if p["pareto_front"] else "normal")
            best = (t, t.get_window_extent(renderer))
        placed.append(best[1])



PIXEL_MARKERS = "o^vs<>"
IMAGE_MARKERS = "DPXph*"


def plot_pareto(prow: list[dict], path: Path, title: str) -> None:
    """Points of one (dataset, device); see the module docstring for the encoding."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in prow if p["ms_per_image"] is not None and p["image_auroc"] is not None]
    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=100)
    fams = list(dict.fromkeys(p["family"] for p in pts))
    cmap = plt.get_cmap("tab10" if len(fams) <= 10 else "tab20")
    methods = list(dict.fromkeys(p["method"] for p in pts))
    image_level = {p["method"] for p in pts if p["level"] == "image"}
    pix = iter(PIXEL_MARKERS * 3)
    img = iter(IMAGE_MARKERS * 3)
    markers = {m: next(img) if m in image_level else next(pix) for m in methods}
    for p in pts:
        color = cmap(fams.index(p["family"]) % cmap.N)
        x, y = p["ms_per_image"], p["image_auroc"]
        lo, hi = num(p.get("image_auroc_lo")), num(p.get("image_auroc_hi"))
        if lo is not None and hi is not None:
            ax.errorbar(x, y, yerr=[[max(y - lo, 0)], [max(hi - y, 0)]], fmt="none", ecolor=color, elinewidth=1,
                        capsize=3, alpha=0.7, zorder=2)
        hollow = p["random_init"] or p["level"] == "image"
        ax.scatter(x, y, s=60, marker=markers[p["method"]], zorder=3, facecolors="white" if hollow else color,
                   edgecolors=color, linewidths=1.8, linestyle="--" if p["level"] == "image" else "-")
        if p["under_load"]:
            ax.scatter(x, y, s=260, marker="o", facecolors="none", edgecolors="red", linewidths=1.0,
                       linestyle="--", zorder=4)
    front = sorted((p for p in pts if p["pareto_front"]), key=lambda p: (p["ms_per_image"], -p["image_auroc"]))
    if front:
        xs, ys = [front[0]["ms_per_image"]], [front[0]["image_auroc"]]
        for p in front[1:]:  # staircase: the best quality reachable at each latency
            xs += [p["ms_per_image"], p["ms_per_image"]]
            ys += [ys[-1], p["image_auroc"]]
        ax.plot(xs, ys, "-", color="0.3", lw=1.2, zorder=2, label="Pareto front")
    xs = [p["ms_per_image"] for p in pts]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 8:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if xs:
        lo, hi = min(xs), max(xs)
        pad = (hi - lo) * 0.25 if hi > lo else max(hi * 0.2, 1.0)
        ax.set_xlim(max(lo - pad * 0.3, 0) if ax.get_xscale() == "linear" else lo / 1.3,
                    hi + pad if ax.get_xscale() == "linear" else hi * 1.8)
    ys = [num(p.get("image_auroc_lo")) or p["image_auroc"] for p in pts]
    ys += [num(p.get("image_auroc_hi")) or p["image_auroc"] for p in pts]
    if ys:
        ax.set_ylim(min(ys) - 0.03, min(1.0, max(ys)) + 0.03)
    Line = plt.Line2D
    handles = [Line([], [], ls="", marker="o", color=cmap(i % cmap.N), label=f) for i, f in enumerate(fams)]
    handles += [Line([], [], ls="", marker=mk, color="0.4", markerfacecolor="white" if m in image_level else "0.4",
                     label=f"{m} (image-level, no map)" if m in image_level else m)
                for m, mk in markers.items() if len(markers) > 1 or image_level]
    handles += [Line([], [], ls="", marker="o", markerfacecolor="white", markeredgecolor="0.3",
                     label="random init (hollow)")] if any(p["random_init"] for p in pts) else []
    handles += [Line([], [], ls="", marker="o", markersize=13, markerfacecolor="none", markeredgecolor="red",
                     label=f"timed under load (load > {LOAD_FRACTION:g} x CPUs)")] \
        if any(p["under_load"] for p in pts) else []
    handles += [Line([], [], color="0.5", marker="_", markersize=10, label="95 % DeLong interval")] \
        if any(num(p.get("image_auroc_lo")) is not None for p in pts) else []
    handles += [Line([], [], color="0.3", label="Pareto front")] if front else []
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    device = pts[0]["device"] if pts else "cpu"
    ax.set_xlabel(f"{'CPU' if device == 'cpu' else device} ms / image (backbone forward + scoring)")
    ax.set_ylabel("image ROC-AUC")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    label_all = len(pts) <= 40
    _place_labels(fig, ax, [p for p in pts if label_all or p["pareto_front"]])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
