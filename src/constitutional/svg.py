"""Matplotlib figures as SVG strings to inline in HTML (the report and the collective web page).

Text is drawn as paths (`svg.fonttype: path`), so a page opened offline needs no font. Each figure
gets its own id salt: several SVGs share one HTML document, and clashing `<clipPath>` ids would
make one chart clip to another's axes; a fixed salt also keeps the output byte-stable.
"""

from __future__ import annotations

import io
import re

import matplotlib
from matplotlib.figure import Figure


def to_svg(fig: Figure, key: str) -> str:
    """The figure as an `<svg>` element to inline in HTML, its ids prefixed with `key`.

    The XML prolog and RDF metadata are dropped (meaningless inside HTML). Matplotlib names
    groups `figure_1`, `axes_1`, ... and glyphs `DejaVuSans-48` in every file; inlined side by
    side those ids would collide, so every id and every reference to one gets the prefix.
    """
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": key}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg") :], flags=re.DOTALL)
    return re.sub(r'(\bid="|href="#|url\(#)', rf"\g<1>{key}-", text)
