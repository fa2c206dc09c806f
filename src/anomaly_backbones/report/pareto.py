"""The Pareto view: image ROC-AUC against ms/image, one point per run and method.

pareto_front(cost, quality) -> [bool]: the non-dominated points (lower cost, higher quality).
pareto_rows(rows)           -> [dict]: pareto.csv, the front computed within each (dataset, device): a GPU
                               timing and a CPU timing are never on one axis.
plot_pareto(prow, path, title): one figure per (dataset, device), PNG and SVG, one panel per init kind
    (init_group: rows) and method (columns), shared axes; each panel labels its own front only, and every
    point of the SVG has a hover <title> (point_title). Colour = backbone family; marker shape = method
    (image-level methods, which have no anomaly map, take their own shapes, hollow with a dashed edge);
    hollow = random init; vertical bars = the 95 % DeLong interval of image ROC-AUC; a red dashed ring =
    timed under load (runs.under_load).
"""
from __future__ import annotations

import re
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



# panel rows: pretrained kinds first (registry `pretraining`, or the init kind outside the registry), random last
INIT_ORDER = ("supervised", "imagenet", "semi-supervised", "semi-weakly-supervised", "self-supervised")
INIT_LAST = ("file", "random")
PIXEL_MARKERS = "o^vs<>"
IMAGE_MARKERS = "DPXph*"
SVG_NS, XLINK_NS = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"


def init_group(p: dict) -> str:
    """The panel row of a point: its init column without the weights' name (fmt.init_label:
    "supervised (IMAGENET1K_V1)" -> supervised, "self-supervised (dino)" -> self-supervised,
    "file b.pth" -> file), or random."""
    return "random" if p["random_init"] else re.split(r"[ (]", str(p["init"]), maxsplit=1)[0]


def _init_rank(kind: str):
    return (kind in INIT_LAST, INIT_LAST.index(kind) if kind in INIT_LAST else 0,
            INIT_ORDER.index(kind) if kind in INIT_ORDER else len(INIT_ORDER), kind)


def point_title(p: dict) -> str:
    """A point's hover text in the SVG: backbone, init, method (and variant), image ROC-AUC with its
    DeLong interval, ms/image and device, and the flags."""
    lo, hi = num(p.get("image_auroc_lo")), num(p.get("image_auroc_hi"))
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    lines = [f"{p['backbone']} · {p['init']} · {p['method']}" + (f" [{p['variant']}]" if p.get("variant") else ""),
             f"image ROC-AUC {p['image_auroc']:.3f}{ci} (95 % DeLong)",
             f"{p['ms_per_image']:.2f} ms/image ({p['device']})"]
    flags = (["on the Pareto front"] if p["pareto_front"] else []) + (["timed under load"] if p["under_load"] else [])
    return "\n".join(lines + ([", ".join(flags)] if flags else []) + [f"run: {p['source']}"])


def _short(p: dict) -> str:
    """A label within a panel (the panel names method and init)."""
    s = p["backbone"] + (f" [{p['variant']}]" if p.get("variant") else "")
    return s if len(s) <= LABEL_CHARS else s[:LABEL_CHARS - 1] + "…"


def _place_labels(ax, renderer, pts: list[tuple[str, dict]]) -> None:
    """Annotate (gid, point) pairs, trying a few offsets per label so that labels overlap neither each
    other nor the panel's edge; the best (highest) points first."""
    placed = []
    offsets = [(6, 4, "left"), (6, -12, "left"), (-6, 4, "right"), (-6, -12, "right"), (6, 16, "left"),
               (6, -24, "left"), (-6, 16, "right"), (-6, -24, "right"), (6, 28, "left"), (6, -36, "left")]
    box = ax.get_window_extent(renderer)
    for gid, p in sorted(pts, key=lambda t: (-t[1]["image_auroc"], t[1]["ms_per_image"])):
        kw = dict(textcoords="offset points", fontsize=7, fontweight="bold" if p["pareto_front"] else "normal")
        best = None
        for dx, dy, ha in offsets:
            t = ax.annotate(_short(p), (p["ms_per_image"], p["image_auroc"]), xytext=(dx, dy), ha=ha, **kw,
                            arrowprops=dict(arrowstyle="-", color="0.6", lw=0.5) if abs(dy) > 12 else None)
            bb = t.get_window_extent(renderer).expanded(1.02, 1.1)
            if box.contains(bb.x0, bb.y0) and box.contains(bb.x1, bb.y1) and not any(bb.overlaps(o) for o in placed):
                best = (t, bb)
                break
            t.remove()
        if best is None:  # every place taken: first choice anyway
            dx, dy, ha = offsets[0]
            t = ax.annotate(_short(p), (p["ms_per_image"], p["image_auroc"]), xytext=(dx, dy), ha=ha, **kw)
            best = (t, t.get_window_extent(renderer))
        best[0].set_gid(gid)
        placed.append(best[1])


def _staircase(ax, front: list[dict], **kw) -> None:
    """The best quality reachable at each latency."""
    front = sorted(front, key=lambda p: (p["ms_per_image"], -p["image_auroc"]))
    if front:
        xs, ys = [front[0]["ms_per_image"]], [front[0]["image_auroc"]]
        for p in front[1:]:
            xs += [p["ms_per_image"], p["ms_per_image"]]
            ys += [ys[-1], p["image_auroc"]]
        ax.plot(xs, ys, **kw)


def plot_pareto(prow: list[dict], path: Path, title: str) -> Path:
    """Points of one (dataset, device) as a grid of panels with shared axes: one row per init kind
    (init_group), one column per method, so that 100+ points stay readable. `pareto_front` (computed
    over the whole dataset and device, pareto_rows) draws as a dashed grey staircase in every panel;
    each panel's own non-dominated points carry a label (bold when on the overall front too) and a
    dark staircase; the other points are found by hovering in the SVG or in pareto.csv. Colour =
    backbone family; marker shape = method (image-level methods, no anomaly map: hollow, dashed edge);
    hollow = random init; bars = 95 % DeLong interval; red dashed ring = timed under load.

    Writes `path` (PNG, for the Markdown report) and the same figure as `path` with suffix .svg, in
    which every point's group <g id="<stem>-pt<i>"> (i = its index among the points with both values,
    in `prow` order) has a <title> (point_title: a browser shows it on hover when the SVG is inline),
    each label's group is <g id="<stem>-label-pt<i>"> and each panel's <g id="<stem>-panel-<r>-<c>">.
    Returns the SVG's path."""
    import io
    import xml.etree.ElementTree as ET

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import replacing

    pts = [p for p in prow if p["ms_per_image"] is not None and p["image_auroc"] is not None]
    methods = list(dict.fromkeys(p["method"] for p in pts)) or ["-"]
    inits = sorted({init_group(p) for p in pts}, key=_init_rank) or ["-"]
    fams = list(dict.fromkeys(p["family"] for p in pts))
    cmap = plt.get_cmap("tab10" if len(fams) <= 10 else "tab20")
    image_level = {p["method"] for p in pts if p["level"] == "image"}
    pix, img = iter(PIXEL_MARKERS * 3), iter(IMAGE_MARKERS * 3)
    markers = {m: next(img) if m in image_level else next(pix) for m in methods}
    legend_in = 2.6
    fig_w, fig_h = 3.9 * len(methods) + legend_in, 3.1 * len(inits) + 0.9
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "pareto"}):   # text as text, stable ids
        fig, axes = plt.subplots(len(inits), len(methods), figsize=(fig_w, fig_h), dpi=100, sharex=True,
                                 sharey=True, squeeze=False)
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem)
        gids = {id(p): f"{stem}-pt{i}" for i, p in enumerate(pts)}
        xs = [p["ms_per_image"] for p in pts]
        log_x = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 8
        overall = [p for p in pts if p["pareto_front"]]
        panels = {}
        for r, kind in enumerate(inits):
            for c, m in enumerate(methods):
                ax = axes[r][c]
                ax.set_gid(f"{stem}-panel-{r}-{c}")
                mine = [p for p in pts if p["method"] == m and init_group(p) == kind]
                panels[ax] = mine
                ax.set_title(f"{m}{' (image-level)' if m in image_level else ''} · {kind} init · {len(mine)}",
                             fontsize=9)
                ax.grid(True, alpha=0.3)
                if not mine:
                    ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="0.5")
                for p in mine:
                    color = cmap(fams.index(p["family"]) % cmap.N)
                    x, y = p["ms_per_image"], p["image_auroc"]
                    lo, hi = num(p.get("image_auroc_lo")), num(p.get("image_auroc_hi"))
                    if lo is not None and hi is not None:
                        ax.errorbar(x, y, yerr=[[max(y - lo, 0)], [max(hi - y, 0)]], fmt="none", ecolor=color,
                                    elinewidth=1, capsize=3, alpha=0.6, zorder=2)
                    hollow = p["random_init"] or p["level"] == "image"
                    ax.scatter(x, y, s=50, marker=markers[p["method"]], zorder=3,
                               facecolors="white" if hollow else color, edgecolors=color, linewidths=1.6,
                               linestyle="--" if p["level"] == "image" else "-").set_gid(gids[id(p)])
                    if p["under_load"]:
                        ax.scatter(x, y, s=220, marker="o", facecolors="none", edgecolors="red", linewidths=1.0,
                                   linestyle="--", zorder=4)
                _staircase(ax, overall, ls="--", color="0.6", lw=1.0, zorder=1)
                own = [p for p, on in zip(mine, pareto_front([p["ms_per_image"] for p in mine],
                                                             [p["image_auroc"] for p in mine])) if on]
                _staircase(ax, own, ls="-", color="0.25", lw=1.2, zorder=2)
                panels[ax] = own
                if log_x:
                    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

                    ax.set_xscale("log")
                    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                    ax.xaxis.set_minor_formatter(NullFormatter())
                if r == len(inits) - 1:
                    dev = pts[0]["device"] if pts else "cpu"
                    ax.set_xlabel(f"{'CPU' if dev == 'cpu' else dev} ms / image", fontsize=9)
                if c == 0:
                    ax.set_ylabel("image ROC-AUC", fontsize=9)
        ax0 = axes[0][0]
        if xs:
            lo, hi = min(xs), max(xs)
            pad = (hi - lo) * 0.25 if hi > lo else max(hi * 0.2, 1.0)
            ax0.set_xlim(lo / 1.3 if log_x else max(lo - pad * 0.3, 0), hi * 1.8 if log_x else hi + pad)
            ys = [num(p.get("image_auroc_lo")) or p["image_auroc"] for p in pts]
            ys += [num(p.get("image_auroc_hi")) or p["image_auroc"] for p in pts]
            ax0.set_ylim(min(ys) - 0.03, min(1.0, max(ys)) + 0.03)
        Line = plt.Line2D
        handles = [Line([], [], ls="", marker="o", color=cmap(i % cmap.N), label=f) for i, f in enumerate(fams)]
        handles += [Line([], [], ls="", marker="o", markerfacecolor="white", markeredgecolor="0.3",
                         label="random init (hollow)")] if any(p["random_init"] for p in pts) else []
        handles += [Line([], [], ls="", marker="o", markersize=12, markerfacecolor="none", markeredgecolor="red",
                         label=f"timed under load\n(load > {LOAD_FRACTION:g} x CPUs)")] \
            if any(p["under_load"] for p in pts) else []
        handles += [Line([], [], color="0.5", marker="_", markersize=10, label="95 % DeLong interval")] \
            if any(num(p.get("image_auroc_lo")) is not None for p in pts) else []
        handles += [Line([], [], color="0.25", label="panel's Pareto front\n(labelled)"),
                    Line([], [], color="0.6", ls="--", label="Pareto front of all\npoints (bold labels)")] \
            if overall else []
        fig.suptitle(title + " · hover a point in the SVG / index.html for its figures", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1 - legend_in / fig_w, 1))
        fig.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1 - legend_in / fig_w, 0.95),
                   borderaxespad=0.3, frameon=False)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax, own in panels.items():
            _place_labels(ax, renderer, [(f"{stem}-label-pt{gids[id(p)].rsplit('-pt', 1)[1]}", p) for p in own])
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", XLINK_NS)
    root = ET.fromstring(buf.getvalue())
    for md in root.findall(f"{{{SVG_NS}}}metadata"):   # RDF boilerplate
        root.remove(md)
    titles = {gids[id(p)]: point_title(p) for p in pts}
    for g in root.iter(f"{{{SVG_NS}}}g"):
        if g.get("id") in titles:
            t = ET.Element(f"{{{SVG_NS}}}title")
            t.text = titles[g.get("id")]
            g.insert(0, t)
    svg = path.with_suffix(".svg")
    with replacing(svg) as fh:
        fh.write(ET.tostring(root, encoding="unicode") + "\n")
    return svg
