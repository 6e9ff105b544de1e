"""The report written out: the blocks of `document` as Markdown (report.md) and as one self-contained HTML page
(report.html, its plots embedded as PNG data)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ..results import latency_protocol, load_results, summary_rows
from .document import document, title

DPI = 144  # 1.5x pixels for sharp plots on high-density screens; shown at the figure's size in CSS pixels

# How each kind of block of `document` is written in each output; the plots themselves are in report.html only.
MARKDOWN_BLOCKS = {
    "heading": lambda level, text: f"{'#' * level} {text}",
    "paragraph": lambda text: text,
    "code": lambda text: f"```\n{text}\n```",
    "table": lambda columns, rows: _markdown_table(columns, rows),
    "figure": lambda make_figure, caption: f"*Plot in report.html: {caption}*" if make_figure else f"*{caption}*",
}
HTML_BLOCKS = {
    "heading": lambda level, text: f"<h{level}>{html.escape(text)}</h{level}>",
    "paragraph": lambda text: f"<p>{html.escape(text)}</p>",
    "code": lambda text: f"<pre>{html.escape(text)}</pre>",
    "table": lambda columns, rows: _html_table(columns, rows),
    "figure": lambda make_figure, caption: _html_figure(make_figure, caption),
}


def _render(results_list: list[dict], writers: dict) -> list[str]:
    return [writers[kind](*arguments) for kind, *arguments in document(results_list)]


def render_markdown(results_list: list[dict]) -> str:
    return "\n\n".join(_render(results_list, MARKDOWN_BLOCKS)) + "\n"


def render_html(results_list: list[dict]) -> str:
    body = _render(results_list, HTML_BLOCKS)
    return (f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title(results_list))}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


def write_report(results_list: list[dict], output_dir: str | Path) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown, page = render_markdown(results_list), render_html(results_list)  # both, or neither file
    md_path, html_path = output_dir / "report.md", output_dir / "report.html"
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return md_path, html_path


def merge(paths: list[str | Path], output_dir: str | Path) -> tuple[Path, Path]:
    """`mnv4 report A.json B.json --output-dir DIR`: one report over several machines' results."""
    results_list = [load_results(path) for path in paths]
    names = [str(path) for path in paths]
    latency_protocol(results_list, names)  # refuses files timed by different protocols, naming them
    summary_rows(results_list, names)  # refuses rows measured twice, naming the file
    return write_report(results_list, output_dir)


def _markdown_table(columns: list[tuple[str, bool]], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"

    rule = "|" + "|".join("---:" if numeric else "---" for _, numeric in columns) + "|"
    return "\n".join([line([header for header, _ in columns]), rule] + [line(row) for row in rows])


def _html_table(columns: list[tuple[str, bool]], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(header)}</th>" for header, _ in columns)
    body = []
    for row in rows:
        cells = []
        for (header, numeric), cell in zip(columns, row):
            classes = "num" if numeric else f"status {cell}" if header == "status" else ""
            attribute = f' class="{classes}"' if classes else ""
            cells.append(f"<td{attribute}>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody></table></div>")


def _html_figure(make_figure, caption: str) -> str:
    if make_figure is None:
        return f'<p class="note">{html.escape(caption)}</p>'
    try:
        import matplotlib  # an optional extra: the runtime-only install has no plots
    except ImportError:
        return (f'<p class="note">{html.escape(caption)} (not drawn: matplotlib is not installed; '
                f"pip install 'mnv4[bench]')</p>")
    # Names from results files (a machine called "a$b") are text, never TeX for matplotlib's math parser.
    with matplotlib.rc_context({"text.parse_math": False}):
        figure = make_figure()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
    width = round(figure.get_figwidth() * 96)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" width="{width}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; }
main { max-width: 1400px; margin: 0 auto; padding: 1.5em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
p { max-width: 75em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; }
.scroll { overflow-x: auto; margin: .8em 0; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: .25em .5em; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
td.status { font-weight: 600; }
td.ok { color: #1a7f37; } td.parity-failed, td.failed { color: #cf222e; }
td.unavailable { color: #6e7781; } td.latency-not-measured { color: #9a6700; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-style: italic; }
"""
