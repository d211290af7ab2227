"""The paraphrase benchmark's builders, on text in the layouts of Debian's debian-faq (plain
text, no-break spaces, wrapped questions, quoted cross-references) and postgresql-doc-15 (HTML
glossary and pages), generated here: a question is removed from the document it is asked of,
and nothing of it is left for word matching."""

from __future__ import annotations

import pytest

from jrag.errors import InputError
from jrag.evaluation.debian_docs import (
    faq_chapters,
    fetch_package,
    glossary_questions,
    html_text,
)

NB = "\u00a0"
FAQ = f"""Table of Contents

1.{NB}Kettles and tea
    1.1.{NB}Why does the kettle whistle when the water boils?
2.{NB}Cups

---------------------------------------------------------------------

Chapter{NB}1.{NB}Kettles and tea

1.1.{NB}Why does the kettle whistle when the water
boils?

    Steam escapes through a narrow spout and sets the reed singing.

1.2.{NB}Can I leave it on the stove overnight?

    No: an empty pot overheats. See Section{NB}2.1, “Which cup keeps
    tea warm longest?” for more.

Chapter{NB}2.{NB}Cups

2.1.{NB}Which cup keeps tea warm longest?

    A double-walled one; porcelain loses heat fast.

2.1.1.{NB}Feedback

    Write to the guild.
"""


def test_faq_chapters_drop_their_questions_and_the_quoted_cross_references() -> None:
    chapters = faq_chapters(FAQ)
    assert [title for title, _, _ in chapters] == [
        f"Chapter{NB}1.{NB}Kettles and tea",
        f"Chapter{NB}2.{NB}Cups",
    ]
    (_, first, asked), (_, second, asked2) = chapters
    assert [q for q, _ in asked] == [
        "Why does the kettle whistle when the water boils?",  # wrapped, joined
        "Can I leave it on the stove overnight?",
    ]
    assert [q for q, _ in asked2] == ["Which cup keeps tea warm longest?", "Feedback"]
    for question in ("whistle when", "stove overnight", "keeps", "Table of Contents"):
        assert question not in first + second
    assert f"See Section{NB}2.1 for more." in first  # the reference stays, its quote goes
    # Each question points at where its answer starts.
    offset = asked[0][1]
    assert first[offset:].lstrip().startswith("Steam escapes")


GLOSSARY = """<dl>
<dt id="GLOSSARY-KETTLE"><span class="glossterm">Kettle</span></dt><dd class="glossdef"><p>
A vessel that heats water &amp; whistles when it boils over a flame. For more information, see
<a class="xref" href="glossary.html#X">Pot</a> and <a class="xref" href="kettles.html">Kettles</a>.
</p></dd>
<dt id="GLOSSARY-CUP"><span class="glossterm">Cup</span></dt><dd class="glossdef"><p>
A small open vessel for drinking hot tea from at the table.</p></dd>
<dt id="GLOSSARY-POT"><span class="glossterm">Pot</span></dt><dd class="glossdef"><p>
Short. For more information, see <a href="pots.html">Pots</a>.</p></dd>
</dl>"""


def test_glossary_questions_are_definitions_without_their_term_pointing_at_a_page() -> None:
    assert glossary_questions(GLOSSARY) == [
        ("A vessel that heats water & whistles when it boils over a flame.", "kettles.html")
    ]  # the cup says where to read nothing; the pot's definition is too short to ask


def test_html_text_knows_where_each_heading_lies() -> None:
    parsed = html_text(
        "<html><head><title>T</title><style>p{}</style></head><body><h2>What Is a Kettle?</h2>"
        "<p>A vessel &lt;hot&gt;.</p><script>x()</script></body></html>"
    )
    text = parsed.text()
    assert "p{}" not in text and "x()" not in text and "A vessel <hot>." in text
    [(title, start, end)] = parsed.headings
    assert title == "What Is a Kettle?" and text[start:end] == title


def test_a_package_that_cannot_be_fetched_is_named(tmp_path) -> None:
    with pytest.raises(InputError, match="jrag-no-such-package"):
        fetch_package("jrag-no-such-package", tmp_path)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(InputError, match=r"debian-faq.*a-file"):  # a cache that cannot exist
        fetch_package("debian-faq", blocked)
