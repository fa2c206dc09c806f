"""reports/index.html: the whole report as one self-contained page.

write_index_html(out, pages) renders the report's Markdown pages (the index, the family tables, the
appendix) one after the other, with every image the pages show (Pareto plots, overlays) inlined as a
`data:` URI and links between the pages turned into links within the page. No script, no style sheet or
font from elsewhere: the page opens offline, and can be mailed or attached as one file. Links to the CSV
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
img { max-width: 100%; } section { border-top: 2px solid #ddd; margin-top: 2em; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""


def anchor(name: str) -> str:
    return "page-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _inline(html_text: str, base: Path) -> str:
    def src(m):
        path = (base / html.unescape(m.group(1))).resolve()
        if not path.is_file():
            return m.group(0)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return f'src="data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"'

    def href(m):
        return f'href="#{anchor(html.unescape(m.group(1)))}"'

    html_text = re.sub(r'src="([^":]+)"', src, html_text)
    return re.sub(r'href="([^":#]+\.md)"', href, html_text)


def write_index_html(out: Path, pages: list[tuple[str, str]], title: str = "Backbone study report") -> Path:
    """pages: (path relative to out, Markdown text). Links "x.md" between pages become "#page-x-md"."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    body = []
    for name, text in pages:
        base = (out / name).parent
        body.append(f'<section id="{anchor(name)}">\n{_inline(md.render(text), base)}</section>')
    page = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}"
            f"</title>\n<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
    path = out / "index.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
