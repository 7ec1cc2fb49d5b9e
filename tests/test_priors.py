"""Prompt priors: placeholders, per-dataset overrides, and frozen prompt snapshots per prior and family."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from freeret.embed.priors import Prior
from freeret.errors import ConfigError

from conftest import REPO, check_snapshot, compose

PRIORS = sorted(p.stem for p in (REPO / "conf" / "prior").glob("*.yaml"))
SNAPSHOT = REPO / "tests" / "snapshots" / "prompts.json"


def load_prior(name: str) -> Prior:
    """A prior as a run composes it (an option may extend another through its defaults list)."""
    return Prior.from_dict(OmegaConf.to_container(compose([f"prior={name}"]).prior, resolve=True))


def test_missing_placeholder_is_a_config_error():
    with pytest.raises(ConfigError, match="undefined placeholder.*query_kind"):
        Prior.from_dict({"name": "bad", "query": "Is {query_kind} related? {text}"})


def test_dataset_override_and_braces_in_text():
    prior = load_prior("freeret")
    generic = prior.render("query", "a {weird} text", False)
    wordnet = prior.render("query", "a {weird} text", False, dataset="wordnet_rd")
    assert "a {weird} text" in generic
    assert "the query is related to the candidate" in generic
    assert "the definition is related to the word" in wordnet


def test_empty_text_leaves_no_blank_line():
    prompt = load_prior("e5v").render("query", "", True)
    assert prompt == "Summary above image in one word:"


def _rendered() -> dict[str, str]:
    """One item per prior x role x modality, through each family's chat template where the template is known offline."""
    out = {}
    for name in PRIORS:
        prior = load_prior(name)
        for role in ("query", "target"):
            out[f"{name}/{role}/text"] = prior.render(role, "a domestic animal that barks", False, "wordnet_rd")
            out[f"{name}/{role}/image"] = prior.render(role, "", True, "smoke_mm")
    return out


def test_prompt_snapshots():
    """A template change fails here until the snapshot is renewed on purpose: FREERET_UPDATE_SNAPSHOTS=1 pytest."""
    check_snapshot(SNAPSHOT, _rendered())


def test_chat_prompt_snapshots_per_family(smollm):
    """The full prompt the model sees, per prior and family (real chat templates; tiny VLMs carry the real ones)."""
    from freeret.backbone.families import IMAGE, get_family
    from freeret.backbone.tiny import TINY_FAMILIES, tiny_checkpoint

    processors = {"text": smollm.processor}
    for family in TINY_FAMILIES:
        processors[family], _ = get_family(family).load_processor(tiny_checkpoint(family))
    got = {}
    for name in PRIORS:
        prior = load_prior(name)
        for family, processor in processors.items():
            has_image = family != "text"
            text = prior.render("query", "a domestic animal that barks", has_image, "wordnet_rd")
            got[f"{family}/{name}/query"] = get_family(family).render(processor, [IMAGE] * has_image + [text], True, None)
    check_snapshot(REPO / "tests" / "snapshots" / "chat_prompts.json", got)
