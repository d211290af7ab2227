"""Generate small test documents at test time, so the repository holds no binary fixtures.

Every document carries distinctive sentences that a test can look for in the parsed text.
PDFs are drawn with fpdf2 (a dev dependency), DOCX files with python-docx.
"""

from __future__ import annotations

from pathlib import Path

TITLE = "Harbour Lantern Survey"
SENTENCES = (
    "The lantern keeper counted forty-two gulls before noon.",
    "A violet ferry crossed the bay without its captain.",
    "Seven brass bells were polished for the winter fair.",
)
PAGE_TWO_SENTENCE = "On the second page the lamp oil ran low again."


def make_pdf(path: Path, pages: tuple[tuple[str, ...], ...] | None = None) -> Path:
    """Write a PDF whose first page opens with TITLE; each page holds its own sentences."""
    path.write_bytes(pdf_bytes(pages))
    return path


def pdf_bytes(pages: tuple[tuple[str, ...], ...] | None = None) -> bytes:
    """The bytes of the PDF that :func:`make_pdf` writes."""
    from fpdf import FPDF

    if pages is None:
        pages = (SENTENCES, (PAGE_TWO_SENTENCE,))
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=False)
    for number, sentences in enumerate(pages, start=1):
        pdf.add_page()
        # Start below the top 7% of the page, which unstructured classifies as a running header.
        pdf.set_y(45)
        if number == 1:
            pdf.set_font("Helvetica", style="B", size=20)
            pdf.cell(0, 12, TITLE, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(8)
        pdf.set_font("Helvetica", size=12)
        for sentence in sentences:
            pdf.cell(0, 8, sentence, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(6)
    return bytes(pdf.output())


def make_blank_pdf(path: Path) -> Path:
    """Write a valid one-page PDF that holds no text at all."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.add_page()
    pdf.rect(20, 20, 50, 30)
    pdf.output(str(path))
    return path


def make_image_only_pdf(path: Path) -> Path:
    """Write a PDF whose only page is a picture of text, as a scanner makes: no text layer."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw

    picture = Image.new("L", (600, 200), color=255)
    ImageDraw.Draw(picture).text((20, 80), SENTENCES[0], fill=0)
    pdf = FPDF(format="A4")
    pdf.add_page()
    pdf.image(picture, x=10, y=10, w=180)
    pdf.output(str(path))
    return path


def make_docx(path: Path) -> Path:
    """Write a DOCX with a Title-styled heading and one paragraph per sentence."""
    import docx

    document = docx.Document()
    document.add_heading(TITLE, level=0)
    for sentence in SENTENCES:
        document.add_paragraph(sentence)
    document.save(str(path))
    return path


def make_html(path: Path) -> Path:
    """Write an HTML page with an <h1> and the sentences as paragraphs."""
    body = "\n".join(f"    <p>{s}</p>" for s in SENTENCES)
    path.write_text(
        '<!DOCTYPE html>\n<html>\n  <head><meta charset="utf-8"><title>ignored</title></head>\n'
        f"  <body>\n    <h1>{TITLE}</h1>\n{body}\n  </body>\n</html>\n",
        encoding="utf-8",
    )
    return path


def make_markdown(path: Path) -> Path:
    """Write a Markdown file with a level-one heading and the sentences as paragraphs."""
    body = "\n\n".join(SENTENCES)
    path.write_text(f"# {TITLE}\n\n{body}\n", encoding="utf-8")
    return path


def make_text(path: Path, encoding: str = "utf-8") -> Path:
    """Write a plain-text file: a title line, then one paragraph per sentence."""
    body = "\n\n".join(SENTENCES)
    path.write_bytes(f"{TITLE}\n\n{body}\n".encode(encoding))
    return path


def long_text(approx_tokens: int) -> str:
    """Varied prose of about ``approx_tokens`` word-piece tokens, in short paragraphs."""
    subjects = (
        "The miller",
        "A quiet clerk",
        "Our neighbour",
        "The ferryman",
        "An old sailor",
    )
    verbs = ("repaired", "painted", "counted", "carried", "described")
    objects = (
        "the north gate",
        "twelve lanterns",
        "a broken oar",
        "the tide tables",
        "a map",
    )
    paragraphs = []
    tokens = 0
    n = 0
    while tokens < approx_tokens:
        sentences = []
        for k in range(4):
            i = n * 4 + k
            sentences.append(
                f"{subjects[i % 5]} {verbs[(i // 5) % 5]} {objects[(i // 25) % 5]} "
                f"on day {i} of the long season."
            )
        paragraphs.append(" ".join(sentences))
        tokens += 4 * 12  # about 12 tokens a sentence
        n += 1
    return "\n\n".join(paragraphs) + "\n"
