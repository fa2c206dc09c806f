"""The Pareto figure at registry scale: one panel per init kind x method, labels for each panel's own
front only, an SVG twin whose points carry a hover <title>, inlined as SVG in index.html."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from anomaly_backbones.report.index_html import write_index_html
from anomaly_backbones.report.pareto import pareto_rows, plot_pareto

SVG = "{http://www.w3.org/2000/svg}"
SUP, RND = "supervised (IMAGENET1K_V1)", "random"
# (backbone, init column, method, ms/image, image ROC-AUC); interval = AUC -/+ 0.02
POINTS = [
    ("resnet18", SUP, "padim", 10.0, 0.90),      # padim/supervised: front
    ("resnet34", SUP, "padim", 20.0, 0.95),      # front
    ("resnet50", SUP, "padim", 30.0, 0.93),      # dominated by resnet34
    ("resnet101", SUP, "padim", 12.0, 0.85),     # dominated by resnet18
    ("convnext_t", SUP, "ocsvm", 15.0, 0.80),    # ocsvm/supervised: front
    ("convnext_s", SUP, "ocsvm", 25.0, 0.80),    # dominated (same AUC, slower)
    ("resnet18", RND, "padim", 10.0, 0.70),      # padim/random: front
    ("resnet34", RND, "padim", 20.0, 0.75),      # front
    ("resnet50", RND, "padim", 30.0, 0.60),      # dominated
    ("resnet18", RND, "ocsvm", 9.0, 0.65),       # ocsvm/random: dominated by resnet34 below
    ("resnet34", RND, "ocsvm", 8.0, 0.66),       # front
    ("resnet50", RND, "ocsvm", 7.0, 0.55),       # front (fastest)
    ("vgg11", RND, "ocsvm", None, 0.70),         # no timing: not drawn
]


def _row(bb, init, method, ms, auc):
    return {"dataset": "mt", "device": "cpu", "backbone": bb, "family": "convnext" if bb.startswith("convnext")
            else "resnet", "init": init, "init_full": "random:seed=1024" if init == RND else "imagenet:IMAGENET1K_V1",
            "random_init": init == RND, "method": method, "level": "image" if method == "ocsvm" else "pixel",
            "variant": "", "ms_per_image": ms, "image_auroc": auc, "image_auroc_lo": round(auc - 0.02, 6),
            "image_auroc_hi": round(auc + 0.02, 6), "pixel_auroc": None, "pixel_aupro": None, "load_1m": 0.2,
            "cpus": 2, "under_load": False, "source": f"exp-{bb}"}


def _brute_front(pts):
    """Non-dominated (ms, auc) pairs, by brute force over the panel."""
    return {(bb, ini, m) for bb, ini, m, ms, auc in pts
            if not any(ms2 <= ms and a2 >= auc and (ms2 < ms or a2 > auc) for _, _, _, ms2, a2 in pts)}


def _plot(tmp_path):
    prow = pareto_rows([_row(*p) for p in POINTS])
    png = tmp_path / "pareto_mt.png"
    svg = plot_pareto(prow, png, "image ROC-AUC vs CPU latency on mt")
    return png, svg


def test_panels_titles_and_front_labels(tmp_path):
    png, svg = _plot(tmp_path)
    assert svg == tmp_path / "pareto_mt.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    root = ET.parse(svg).getroot()
    groups = {g.get("id"): g for g in root.iter(SVG + "g") if g.get("id")}
    # 2 init kinds x 2 methods
    assert sorted(i for i in groups if "-panel-" in i) == [f"pareto_mt-panel-{r}-{c}" for r in (0, 1) for c in (0, 1)]
    # one <title> per drawn point (12: the untimed vgg11 is not drawn), with its figures
    pts = {i: g for i, g in groups.items() if re.fullmatch(r"pareto_mt-pt\d+", i)}
    assert len(pts) == 12 and len(list(root.iter(SVG + "title"))) == 12
    titles = {}
    for i, g in pts.items():
        t = g.findall(SVG + "title")
        assert len(t) == 1 and list(g)[0] is t[0]
        titles[i] = t[0].text
    drawn = [p for p in POINTS if p[3] is not None]
    for bb, ini, m, ms, auc in drawn:
        want = (f"{bb} · {ini} · {m}\nimage ROC-AUC {auc:.3f} [{auc - 0.02:.3f}, {auc + 0.02:.3f}] (95 % DeLong)\n"
                f"{ms:.2f} ms/image (cpu)")
        assert sum(t.startswith(want) for t in titles.values()) == 1, want
    assert ("resnet34 · supervised (IMAGENET1K_V1) · padim\nimage ROC-AUC 0.950 [0.930, 0.970] (95 % DeLong)\n"
            "20.00 ms/image (cpu)\non the Pareto front\nrun: exp-resnet34") in titles.values()
    # labels: exactly each panel's own front
    key = {i: tuple(t.split("\n")[0].split(" · ")) for i, t in titles.items()}
    labelled = set()
    for i in groups:
        m = re.fullmatch(r"pareto_mt-label-(pt\d+)", i)
        if m:
            bb, ini, meth = key[f"pareto_mt-{m.group(1)}"]
            assert "".join(groups[i].itertext()).strip() == bb        # the label names the backbone
            labelled.add((bb, ini, meth))
    want = set()
    for ini in (SUP, RND):
        for meth in ("padim", "ocsvm"):
            want |= _brute_front([p for p in drawn if p[1] == ini and p[2] == meth])
    assert labelled == want and len(want) == 7


def test_index_html_inlines_the_svg_with_its_titles(tmp_path):
    _plot(tmp_path)
    page = write_index_html(tmp_path, [("README.md", "# R\n\n![Pareto front on mt](pareto_mt.png)\n")]).read_text()
    assert '<svg role="img" aria-label="Pareto front on mt"' in page and "<img" not in page
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert svg.count("<title>") == 12
    assert "<title>resnet50 · random · ocsvm\nimage ROC-AUC 0.550 [0.530, 0.570] (95 % DeLong)\n7.00 ms/image" in svg
