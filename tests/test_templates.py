"""The one prompt-template type (freeret/templates.py): filling, variants bound to a dataset, pieces, the split."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from freeret.errors import ConfigError
from freeret.prompts import DatasetPrompt
from freeret.templates import MARK, Template, fill, split_at_line
from helpers import REPO


def test_fill_formats_vars_then_inserts_literals_verbatim():
    values = {"kind": "{unit}s", "unit": "word", "text": "a {brace} }{ text"}
    assert fill("Find the {kind}: {text}", values, ("text",)) == "Find the words: a {brace} }{ text"
    assert fill("{query} of a {unit}", values, ("query",)) == "{query} of a word"  # a slot stays for later
    assert fill("no placeholders", {}) == "no placeholders"


def test_bind_applies_the_dataset_variant_and_vars():
    t = Template("Q: {query}\nA {kind}:", ("query",), vars={"kind": "word"}, variants={"short": "{query}?", "same": None})
    assert t.bind(None, "scorer", "x") is t
    assert t.bind(DatasetPrompt("d", {"kind": "class"}), "scorer", "x").pieces() == (["Q: ", "\nA class:"], "")
    assert t.bind(DatasetPrompt("d", {}, {"scorer": "short"}), "scorer", "x").pieces() == (["", "?"], "")
    assert t.bind(DatasetPrompt("d", {}, {"scorer": "same"}), "scorer", "x").template == t.template
    with pytest.raises(ConfigError, match="asks for scorer variant 'nope'.*scorer 'x' does not define"):
        t.bind(DatasetPrompt("d", {}, {"scorer": "nope"}), "scorer", "x")


def test_validate_checks_slots_and_vars_in_every_variant():
    with pytest.raises(ConfigError, match=r"o \(variant v\): the slots must come in the order"):
        Template("{query} {candidate}", ("query", "candidate"), variants={"v": "{candidate} {query}"}).validate("o")
    with pytest.raises(ConfigError, match="undefined placeholder"):
        Template("{query} {what}", ("query",)).validate("o")


def test_split_at_the_marked_line():
    split = split_at_line(f"system\nQuery: q\nCandidate: {MARK}\nAnswer:")
    assert split == ("system\nQuery: q\n", f"Candidate: {MARK}\nAnswer:")
    assert split.suffix_for("dog") == "Candidate: dog\nAnswer:"


def test_rag_templates_render_as_before():
    """conf/pipeline/rag.yaml's templates through Template give what str.format gave (issue 24, item 3)."""
    pcfg = OmegaConf.load(REPO / "conf" / "pipeline" / "rag.yaml")["pipeline"]
    docs, question = "[1] a {braced} doc\n[2] other", "what is {x}?"
    rag = Template(pcfg["template"], ("documents", "question"))
    closed = Template(pcfg["closed_book_template"], ("documents", "question"))
    assert rag.render({"documents": docs, "question": question}) == pcfg["template"].format(documents=docs, question=question)
    assert closed.render({"question": question}) == pcfg["closed_book_template"].format(question=question)


def test_one_marker_and_one_prompts_module():
    """No second split marker or template module: the marker lives in templates.py only, one module is prompts.py."""
    code = {p: p.read_text() for p in (REPO / "freeret").rglob("*.py")}
    assert [p.name for p in code if "\\u2063" in code[p]] == ["templates.py"]
    assert [str(p.relative_to(REPO)) for p in code if p.name == "prompts.py"] == ["freeret/prompts.py"]


def test_a_framing_is_checked_by_its_template():
    """A framing holding a slot twice was split at its first {query} before; its Template now refuses it."""
    from freeret.rerank.framing import Framing

    with pytest.raises(ConfigError, match="framing 'x': the template must hold {query}, {candidate} once each"):
        Framing.from_dict({"name": "x", "template": "{query} {candidate} {query}", "options": ["A", "B"], "match": "A"})
    framing = Framing.from_dict({"name": "x", "template": "Q: {query}\nC: {candidate}\nA or B?", "options": ["A", "B"],
                                 "match": "A", "variants": {"v": "{query} | {candidate}"}})
    assert framing.split() == ("Q: ", "\nC: ", "\nA or B?")
    assert framing.for_dataset(DatasetPrompt("d", {}, {"framing": "v"})).split() == ("", " | ", "")
