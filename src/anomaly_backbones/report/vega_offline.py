"""The offline page of `dvc plots show` / `dvc plots diff`: .dvc/plots/offline.html.

DVC writes each plot as a vega-lite spec that calls `vegaEmbed`, and by default loads vega, vega-lite
and vega-embed from a CDN: without internet the page is blank. `.dvc/config` sets
`plots.html_template = plots/offline.html`, a page that carries the three libraries inline (no
`{scripts}` placeholder, so DVC adds no CDN tag) and wraps vegaEmbed so that the plots' menu offers no
"Open in Vega Editor" (a link to the network).

The bundle comes from vl-convert-python's `javascript_bundle()`, a maintained build of vega, vega-lite
and vega-embed with their dependencies. Regenerate the page (e.g. for newer libraries) in a scratch
environment, never a dependency of the project:

    python -m venv /tmp/vlc && /tmp/vlc/bin/pip install vl-convert-python==1.9.0.post1
    /tmp/vlc/bin/python src/anomaly_backbones/report/vega_offline.py .dvc/plots/offline.html

remote_references(text) lists what in a page would be fetched from another host (the test of the page,
and of reports/index.html, uses it). Only the standard library here: the script runs without the project.
"""
from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

VEGA_LITE = "5.21"   # the major version of DVC's templates ($schema vega-lite/v5)

EMBED_DEFAULTS = """
(function () {
  // every plot DVC writes calls vegaEmbed(el, spec): keep the menu's export and source actions, drop the
  // "Open in Vega Editor" link (it needs the network)
  const embed = window.vegaEmbed;
  window.vegaEmbed = function (el, spec, opt) {
    return embed(el, spec, Object.assign({actions: {export: true, source: true, compiled: false, editor: false}},
                                         opt || {}));
  };
})();
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>DVC plots (offline)</title>
<!-- {versions}, bundled by vl-convert-python {vlc} (javascript_bundle).
     Written by src/anomaly_backbones/report/vega_offline.py: do not edit by hand. -->
<script>{bundle}</script>
<script>{defaults}</script>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
body > div {{ display: inline-block; vertical-align: top; margin: 0 1.5em 1.5em 0; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def build_page() -> str:
    import vl_convert as vlc
    from importlib.metadata import version

    bundle = vlc.javascript_bundle(vl_version=VEGA_LITE)
    for bad in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if bad in bundle:
            raise SystemExit(f"the bundle contains {bad!r}: it cannot be inlined in DVC's template")
    versions = (f"vega {vlc.get_vega_version()}, vega-lite {VEGA_LITE}, vega-embed {vlc.get_vega_embed_version()}")
    return PAGE.format(versions=versions, vlc=version("vl-convert-python"), bundle=bundle,
                       defaults=EMBED_DEFAULTS.strip())


class _Refs(HTMLParser):
    ATTRS = {"src", "href", "data", "poster", "action", "formaction", "srcset", "background", "content"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in self.ATTRS and value and re.match(r"\s*(https?:|//|ftp:)", value, re.I):
                self.refs.append(f"<{tag} {name}={value}>")
        if tag == "meta" and any(n == "http-equiv" and (v or "").lower() == "refresh" for n, v in attrs):
            url = next((v for n, v in attrs if n == "content" and v and "url=" in v.lower()), None)
            if url:
                self.refs.append(f"<meta refresh {url}>")


def remote_references(text: str) -> list[str]:
    """What a browser would fetch from another host when it opens the page: remote src/href (scripts,
    style sheets, images, frames, links), CSS url()/@import of a remote address, and vega data loaded
    from a URL ("url": "http..." in a spec). Strings inside the inlined libraries (such as the vega-lite
    $schema identifier, or the editor address of the removed action) are not references."""
    p = _Refs()
    p.feed(text)
    refs = list(p.refs)
    refs += re.findall(r"url\(\s*['\"]?(?:https?:)?//[^)]*\)", text, re.I)
    refs += re.findall(r"@import\s+['\"]?(?:url\()?['\"]?(?:https?:)?//[^;'\")]*", text, re.I)
    refs += re.findall(r"\"url\"\s*:\s*\"(?:https?:)?//[^\"]*\"", text)
    return refs


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".dvc/plots/offline.html")
    page = build_page()
    if remote_references(page):
        raise SystemExit(f"the page refers to remote addresses: {remote_references(page)[:5]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out} ({len(page) / 1e6:.2f} MB)")
