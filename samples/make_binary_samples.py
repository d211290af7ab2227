"""Render the two binary sample documents (PDF and DOCX) from their Markdown sources.

Sources live in ``samples-src/`` at the repository root so that ``jrag ingest samples/`` never
sees them; the outputs are written next to this script:

    samples-src/stonegate-bakers-annual-report.md   -> samples/stonegate-bakers-annual-report.pdf
    samples-src/linden-reach-operations-handbook.md -> samples/linden-reach-operations-handbook.docx

Run from anywhere with fpdf2 and python-docx installed:

    python samples/make_binary_samples.py

Only a tiny subset of Markdown is understood: ``# `` title, ``## `` / ``### `` headings,
``- `` bullets and blank-line separated paragraphs. The sources are plain Latin-1 (in fact ASCII),
which the PDF core fonts can encode. Output is byte-for-byte deterministic (fixed dates).
"""

from __future__ import annotations

import datetime as dt
import io
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE.parent / "samples-src"
PDF_SOURCE = "stonegate-bakers-annual-report.md"
DOCX_SOURCE = "linden-reach-operations-handbook.md"
FIXED_DATE = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def blocks(markdown: str) -> list[tuple[str, str]]:
    """Split Markdown into (kind, text) blocks: title, h2, h3, bullet, para."""
    out: list[tuple[str, str]] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append(("para", " ".join(para)))
            para.clear()

    for raw in markdown.splitlines():
        line = raw.strip()
        if not line:
            flush()
        elif line.startswith("### "):
            flush()
            out.append(("h3", line[4:]))
        elif line.startswith("## "):
            flush()
            out.append(("h2", line[3:]))
        elif line.startswith("# "):
            flush()
            out.append(("title", line[2:]))
        elif line.startswith("- "):
            flush()
            out.append(("bullet", line[2:]))
        else:
            para.append(line)
    flush()
    return out


def read_source(name: str) -> str:
    text = (SOURCES / name).read_text(encoding="utf-8")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise SystemExit(f"{name}: character outside Latin-1 at {exc.start}: {bad!r}") from exc
    return text


def render_pdf(src: str, dest: Path) -> None:
    from fpdf import FPDF

    parts = blocks(read_source(src))
    pdf = FPDF(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_margins(22, 20, 22)
    pdf.set_auto_page_break(auto=True, margin=20)
    title = next((t for k, t in parts if k == "title"), dest.stem)
    pdf.set_title(title)
    pdf.set_author("Stonegate Bakers' Cooperative (fictional sample)")
    pdf.add_page()
    for kind, text in parts:
        if kind == "title":
            pdf.set_font("Helvetica", "B", 18)
            pdf.multi_cell(0, 9, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(4)
        elif kind in ("h2", "h3"):
            pdf.ln(3)
            pdf.set_font("Helvetica", "B", 14 if kind == "h2" else 12)
            pdf.multi_cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        elif kind == "bullet":
            pdf.set_font("Helvetica", "", 11)
            pdf.set_x(pdf.l_margin + 4)
            pdf.multi_cell(0, 5.5, "- " + text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        else:
            pdf.set_font("Helvetica", "", 11)
            pdf.multi_cell(0, 5.5, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
    pdf.output(str(dest))


def render_docx(src: str, dest: Path) -> None:
    import docx

    parts = blocks(read_source(src))
    document = docx.Document()
    props = document.core_properties
    props.title = next((t for k, t in parts if k == "title"), dest.stem)
    props.author = "Ostrey City Water (fictional sample)"
    props.created = props.modified = FIXED_DATE.replace(tzinfo=None)
    props.last_modified_by = props.author
    props.revision = 1
    for kind, text in parts:
        if kind == "title":
            document.add_heading(text, level=0)
        elif kind == "h2":
            document.add_heading(text, level=1)
        elif kind == "h3":
            document.add_heading(text, level=2)
        elif kind == "bullet":
            document.add_paragraph(text, style="List Bullet")
        else:
            document.add_paragraph(text)
    buffer = io.BytesIO()
    document.save(buffer)
    # Rewrite the zip with fixed entry timestamps so that reruns are byte-identical.
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_DATE.timetuple()[:6])
            fixed.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(fixed, src.read(info.filename))


def main() -> int:
    pdf_out = HERE / (Path(PDF_SOURCE).stem + ".pdf")
    docx_out = HERE / (Path(DOCX_SOURCE).stem + ".docx")
    render_pdf(PDF_SOURCE, pdf_out)
    render_docx(DOCX_SOURCE, docx_out)
    for path in (pdf_out, docx_out):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
