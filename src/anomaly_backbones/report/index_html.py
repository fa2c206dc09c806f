"""reports/index.html: the whole report as one self-contained page.

write_index_html(out, pages) renders the report's Markdown pages (the index, the family tables, the
appendix) one after the other, with every image the pages show (overlays) inlined as a `data:` URI,
except a PNG with an SVG twin beside it (the Pareto plots: report.pareto.plot_pareto), which is
replaced by the SVG itself, inline, because a browser shows an SVG's <title> tooltips only there (not
in an <img>); links between the pages become links within the page. One short inline script
(SORT_SCRIPT: a click on a table's header sorts its rows by that column, numbers as numbers); no
script, style sheet or font from elsewhere: the page opens offline, and can be mailed or attached as
one file. Links to the CSV
files stay relative (they lie beside it).
"""
from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
th { background: #f3f3f3; } td[style*="right"] { font-variant-numeric: tabular-nums; }
img, svg { max-width: 100%; height: auto; } section { border-top: 2px solid #ddd; margin-top: 2em; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""

SORT_SCRIPT = """
document.querySelectorAll("table").forEach(function (t) {
  t.querySelectorAll("th").forEach(function (th, i) {
    th.style.cursor = "pointer"; th.title = "sort";
    th.addEventListener("click", function () {
      var body = t.tBodies[0], rows = Array.from(body.rows), up = th.dataset.dir !== "up";
      var key = function (r) { var s = (r.cells[i] || {}).textContent || "", v = parseFloat(s);
                               return isNaN(v) ? s : v; };
      rows.sort(function (a, b) { var x = key(a), y = key(b);
        var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
        return up ? c : -c; });
      th.dataset.dir = up ? "up" : "down";
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def anchor(name: str) -> str:
    return "page-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _inline(html_text: str, base: Path) -> str:
    def src(m):
        path = (base / html.unescape(m.group(1))).resolve()
        if not path.is_file() or (path.suffix == ".png" and path.with_suffix(".svg").is_file()):
            return m.group(0)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return f'src="data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"'

    def href(m):
        return f'href="#{anchor(html.unescape(m.group(1)))}"'

    def svg(m):
        path = (base / html.unescape(m.group(1))).resolve().with_suffix(".svg")
        if not path.is_file():
            return m.group(0)
        text = path.read_text(encoding="utf-8")
        return text[text.index("<svg"):].replace("<svg", f'<svg role="img" aria-label="{m.group(2)}"', 1).strip()

    html_text = re.sub(r'src="([^":]+)"', src, html_text)
    html_text = re.sub(r'href="([^":#]+\.md)"', href, html_text)
    return re.sub(r'<img src="([^":]+\.png)" alt="([^"]*)"\s*/?>', svg, html_text)   # last: no rewriting inside


def write_index_html(out: Path, pages: list[tuple[str, str]], title: str = "Backbone study report") -> Path:
    """pages: (path relative to out, Markdown text). Links "x.md" between pages become "#page-x-md"."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    body = []
    for name, text in pages:
        base = (out / name).parent
        body.append(f'<section id="{anchor(name)}">\n{_inline(md.render(text), base)}</section>')
    page = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}"
            f"</title>\n<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + f"\n<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n")
    path = out / "index.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
