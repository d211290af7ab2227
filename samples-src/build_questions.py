"""Regenerate samples-src/questions.jsonl: find each answer's offset in its document's text.

Offsets are into the text jrag extracts (jrag.parse.parse_file) for .md/.txt/.html, and into the
Markdown source in samples-src/ for the generated .pdf/.docx. Run check_samples.py afterwards.

    PYTHONPATH=. python samples-src/build_questions.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from check_samples import document_text  # noqa: E402

QUESTIONS = [
    # (document, question, answer)
    (
        "harrowmere-lighthouse-society.md",
        "When was the Fresnel lens at Gull Point re-ground, and who did the work?",
        "Ottoline Brask",
    ),
    (
        "harrowmere-lighthouse-society.md",
        "How much money did the first lantern auction on the harbour wall"
        " raise for the lighthouse?",
        "3,412 crowns",
    ),
    (
        "harrowmere-lighthouse-society.md",
        "What replaced the old diaphone fog signal at the"
        " lighthouse, and how far away could it be heard?",
        "electric horn audible up to eleven nautical miles",
    ),
    (
        "marrow-language-manual.md",
        "In the Marrow language, how many bytes of text does each rope leaf hold for long strings?",
        "1,536 bytes",
    ),
    (
        "marrow-language-manual.md",
        "What keyword did early versions of Marrow use to start a"
        " concurrent task before it was renamed to spawn?",
        "braid",
    ),
    (
        "marrow-language-manual.md",
        "How large is the initial stack of a Marrow fiber?",
        "24 kilobytes",
    ),
    (
        "tidewright-rulebook.md",
        "In Tidewright, what happens to a player who ends their turn holding too many reed tokens?",
        "discard down to three",
    ),
    (
        "tidewright-rulebook.md",
        "How is a tie for the most renown broken at the end of a game of Tidewright?",
        "most unspent lanterns",
    ),
    (
        "tidewright-rulebook.md",
        "Which pieces are taken out of the box for a two-player game of Tidewright?",
        "the Ferryman tiles and the blue tide die",
    ),
    (
        "vellach-pass-railway.txt",
        "By how many degrees does the railway turn inside the spiral tunnel at Orsenz?",
        "287 degrees",
    ),
    (
        "vellach-pass-railway.txt",
        "How long is the covered snow gallery at Brandegg on the mountain railway?",
        "1,340 metres long",
    ),
    (
        "vellach-pass-railway.txt",
        "What nickname does the valley give the 1929 electric locomotive number 7?",
        "Old Marmot",
    ),
    (
        "carrow-fell-instrument-log.txt",
        "Which optical works realuminised the observatory telescope's primary mirror?",
        "Hesketh Optical Works",
    ),
    (
        "carrow-fell-instrument-log.txt",
        "How large was the periodic tracking error caused by the"
        " eccentric worm on the right ascension drive?",
        "4.2 arcseconds peak to peak",
    ),
    (
        "carrow-fell-instrument-log.txt",
        "For how many nights was the observatory dome closed because"
        " barn owls nested in the shutter?",
        "nineteen nights",
    ),
    (
        "ashen-drifter-field-guide.html",
        "Below what night temperature do ashen drifter moths almost never fly?",
        "8 degrees Celsius",
    ),
    (
        "ashen-drifter-field-guide.html",
        "How far do drifter moths migrate from the Sallow Estuary dunes to the Brannock Hills?",
        "about 310 kilometres",
    ),
    (
        "ashen-drifter-field-guide.html",
        "What is the record number of drifter moths counted in a single light trap in one night?",
        "4,917 drifters",
    ),
    (
        "stonegate-bakers-annual-report.pdf",
        "What fixed price does the bakery cooperative pay the Fenwick Mill for its rye flour?",
        "62 pence per kilo",
    ),
    (
        "stonegate-bakers-annual-report.pdf",
        "How many loaves can the bakery's deck oven hold in one load since its floor was rebuilt?",
        "160 large loaves",
    ),
    (
        "stonegate-bakers-annual-report.pdf",
        "What name do the bakers give to their sourdough starter?",
        "Old Maud",
    ),
    (
        "linden-reach-operations-handbook.docx",
        "At what head loss or running time is a rapid gravity filter"
        " backwashed at the treatment works?",
        "2.4 metres or when it has been in service for 60 hours",
    ),
    (
        "linden-reach-operations-handbook.docx",
        "What free chlorine residual should water have at the outlet of the contact tank?",
        "0.7 milligrams per litre",
    ),
    (
        "linden-reach-operations-handbook.docx",
        "What code phrase does the shift supervisor say to declare a water quality incident?",
        "Amber Sluice",
    ),
]


def main() -> int:
    rows = []
    texts: dict[str, str] = {}
    for document, question, answer in QUESTIONS:
        if document not in texts:
            texts[document] = document_text(document)
        offset = texts[document].find(answer)
        if offset < 0:
            raise SystemExit(f"{document}: answer {answer!r} not found")
        rows.append(
            {
                "question": question,
                "document": document,
                "answer": answer,
                "answer_char_offset": offset,
                "past_token_512": True,
            }
        )
    out = HERE / "questions.jsonl"
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    out.write_text(lines, encoding="utf-8")
    print(f"wrote {len(rows)} questions to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
