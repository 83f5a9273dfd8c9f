"""A report document rendered twice from the same content: Markdown and self-contained HTML.

A document is a list of blocks, each a tuple: ``("h", level, text)``, ``("p", text)``,
``("ul", [item, ...])`` (empty: "none"), ``("table", DataFrame)`` and ``("img", path, alt)``
(HTML embeds the PNG as a data URI). What goes into the blocks is :mod:`reports.sections`.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from reports.figures import png_data_uri

__all__ = ["render_html", "render_markdown"]


def _md_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def render_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *content in blocks:
        if kind == "h":
            out.append("#" * content[0] + " " + content[1])
        elif kind == "p":
            out.append(content[0])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in content[0]) or "- none")
        elif kind == "table":
            out.append(_md_table(content[0]))
        elif kind == "img":
            out.append(f"![{content[1]}]({Path(content[0]).name})\n\n*{content[1]}*")
    return "\n\n".join(out) + "\n"


_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "th,td{border:1px solid #bbb;padding:3px 8px;text-align:left}"
    "th{background:#eee}img{max-width:100%}"
)


def render_html(blocks: list[tuple], title: str) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for kind, *content in blocks:
        if kind == "h":
            out.append(f"<h{content[0]}>{html.escape(content[1])}</h{content[0]}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(content[0])}</p>")
        elif kind == "ul":
            items = content[0] or ["none"]
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        elif kind == "table":
            out.append(content[0].to_html(index=False, escape=True, border=0))
        elif kind == "img":
            uri = png_data_uri(content[0])
            caption = html.escape(content[1])
            out.append(
                f'<figure><img alt="{caption}" src="{uri}"><figcaption>{caption}</figcaption>'
                "</figure>"
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"
