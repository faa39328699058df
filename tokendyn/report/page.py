"""The HTML of every tokendyn page: one template (page.html) and one style (style.css),
shipped beside this module, and the pieces pages are made of (tables, embedded figures,
markdown, check tables).

Pages are self-contained: figures are embedded as data URIs, the style is inline and
there are no scripts, so a page can be mailed, attached or opened offline.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template

from .checks import shown_outcome

NUM = ' class="num"'
MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class Raw(str):
    """A table cell or fragment that is already HTML (not escaped again)."""


@cache
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def esc(value) -> str:
    """HTML text of ``value``; :class:`Raw` passes through."""
    return value if isinstance(value, Raw) else html.escape(str(value))


def page(title: str, main: str, header: str = "", nav: str = "", footer: str = "") -> str:
    """A whole page: ``title`` is text; ``main``, ``header``, ``nav``, ``footer`` are HTML."""
    return Template(_asset("page.html")).substitute(
        title=esc(title), style=_asset("style.css").strip(), header=header, nav=nav, main=main, footer=footer)


def data_uri(path: Path) -> str:
    """The file as a data: URI (PNG, SVG or JPEG)."""
    path = Path(path)
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"cannot embed {path.name}: not a PNG, SVG or JPEG file")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def embed_image(path: Path, alt: str, caption: str | None = None) -> str:
    """A <figure> with the image embedded as a data URI and an optional caption."""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="{data_uri(path)}">{cap}</figure>'


def table(columns: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[int] = (), caption: str = "",
          cls: str = "") -> str:
    """An HTML table (in a wrapper that scrolls sideways on a narrow screen).

    columns: header texts; rows: cell values (text is escaped, :class:`Raw` is not);
    numeric: indices of columns aligned right; cls: a class for the table ("cards" stacks
    each row as a card on a phone, every cell labelled with its column).
    """
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(f'<td data-label="{esc(c)}"{NUM if i in numeric else ""}>{esc(v)}</td>'
                        for i, (c, v) in enumerate(zip(columns, row)))
        body.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    attr = f' class="{esc(cls)}"' if cls else ""
    return (f'<div class="table-wrap"><table{attr}>{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def outcome_badge(outcome: str) -> Raw:
    """The outcome as a coloured label that also reads in black and white."""
    return Raw(f'<span class="outcome outcome-{outcome.replace(" ", "-")}">{esc(outcome)}</span>')


def checks_table(checks: Sequence[dict], with_section: bool = True, section_titles: dict | None = None) -> str:
    """Checks (JSON dicts with claim, tolerance, measured, outcome, note, section) as a table."""
    titles = section_titles or {}
    columns = (["section"] if with_section else []) + ["claim", "tolerance", "measured", "outcome"]
    rows = []
    for c in checks:
        note = f'<div class="note">{markdown_inline(c["note"])}</div>' if c.get("note") else ""
        cells = [Raw(f'<a href="#sec-{esc(c["section"])}">{esc(titles.get(c["section"], c["section"]))}</a>')] \
            if with_section else []
        cells += [c["claim"], c["tolerance"], Raw(esc(c["measured"]) + note), outcome_badge(shown_outcome(c))]
        rows.append(cells)
    return table(columns, rows, cls="cards")


def _markdown_parser():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown_to_html(text: str, base: Path | None = None) -> str:
    """Markdown (CommonMark and tables) to HTML; images whose files are found under
    ``base`` are embedded as data URIs, tables scroll sideways on narrow screens.
    An image that is not found keeps its path, so a missing figure shows as broken."""
    md = _markdown_parser()

    def image(renderer, tokens, idx, options, env):
        tok = tokens[idx]
        src = tok.attrGet("src") or ""
        alt = tok.content or ""
        path = Path(base, src) if base is not None and "://" not in src and not src.startswith("data:") else None
        if path is not None and path.is_file() and path.suffix.lower() in MIME:
            src = data_uri(path)
        cap = f'<span class="figcaption">{esc(alt)}</span>' if alt else ""
        return f'<span class="fig"><img class="figure" alt="{esc(alt)}" src="{esc(src)}">{cap}</span>'

    md.add_render_rule("image", image)
    out = md.render(text)
    return out.replace("<table>", '<div class="table-wrap"><table>').replace("</table>", "</table></div>")


def markdown_inline(text: str) -> str:
    """One line of markdown (code spans, emphasis, links) as inline HTML, no paragraph."""
    return _markdown_parser().renderInline(text)


__all__ = ["Raw", "checks_table", "data_uri", "embed_image", "esc", "markdown_inline", "markdown_to_html",
           "outcome_badge", "page", "table"]
