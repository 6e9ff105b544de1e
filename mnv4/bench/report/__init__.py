"""report.md and report.html from one or more results.json files (one per machine).

Both documents come from one list of blocks (headings, paragraphs, tables, figures) built in `document`, so the
Markdown and the HTML always show the same numbers; `render` writes the blocks out, and only the HTML carries the
plots of `plots`, embedded as PNG data so the page is one file."""
from .render import merge, render_html, render_markdown, write_report

__all__ = ["merge", "render_html", "render_markdown", "write_report"]
