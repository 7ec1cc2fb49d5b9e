"""Prompt priors: placeholders, per-dataset overrides, and frozen prompt snapshots per prior and family."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from freeret.embed.priors import Prior
from freeret.errors import ConfigError
from helpers import REPO, check_snapshot, compose, dataset_prompt

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
    wordnet = prior.for_dataset(dataset_prompt("wordnet_rd")).render("query", "a {weird} text", False)
    assert "a {weird} text" in generic
    assert "the query is related to the candidate" in generic
    assert "the definition is related to the word" in wordnet


def test_empty_text_leaves_no_blank_line():
    prompt = load_prior("e5v").render("query", "", True)
    assert prompt == "Summary above image in one word:"


def _rendered() -> dict[str, str]:
    """One item per prior x role x modality, through each family's chat template where the template is known offline."""
    out = {}
    wordnet, smoke = dataset_prompt("wordnet_rd"), dataset_prompt("smoke_mm")
    for name in PRIORS:
        prior = load_prior(name)
        for role in ("query", "target"):
            out[f"{name}/{role}/text"] = prior.for_dataset(wordnet).render(role, "a domestic animal that barks", False)
            out[f"{name}/{role}/image"] = prior.for_dataset(smoke).render(role, "", True)
    return out


def test_prompt_snapshots():
    """A template change fails here until the snapshot is renewed on purpose: FREERET_UPDATE_SNAPSHOTS=1 pytest."""
    check_snapshot(SNAPSHOT, _rendered())


def test_chat_prompt_snapshots_per_family(smollm):
    """The full prompt the model sees, per prior and family (real chat templates; tiny VLMs carry the real ones)."""
    from freeret.backbone.families import IMAGE, get_family
    from freeret.toy.models import TINY_FAMILIES, tiny_checkpoint

    processors = {"text": smollm.processor}
    for family in TINY_FAMILIES:
        processors[family], _ = get_family(family).load_processor(tiny_checkpoint(family))
    got = {}
    for name in PRIORS:
        prior = load_prior(name).for_dataset(dataset_prompt("wordnet_rd"))
        for family, processor in processors.items():
            has_image = family != "text"
            text = prior.render("query", "a domestic animal that barks", has_image)
            got[f"{family}/{name}/query"] = get_family(family).render(processor, [IMAGE] * has_image + [text], True, None)
    check_snapshot(REPO / "tests" / "snapshots" / "chat_prompts.json", got)


def test_dataset_facts_override_vars_and_pick_checked_variants():
    """A dataset's prompt vars override the prior's defaults; a prior variant it names must exist; old keys refused."""
    from freeret.prompts import DatasetPrompt

    qa = dataset_prompt("wordnet/qa_blank")
    line = load_prior("freeret").for_dataset(qa).render("query", "I ___ home", False).splitlines()
    assert line[0] == "You are required to assess if the sentence with a missing word (___) is related to the word."
    assert line[-2] == "- Capture the word that fills the blank."
    assert load_prior("e5v").for_dataset(qa).render("query", "x", False) == "x\nSummary above sentence in one word:"
    prior = Prior.from_dict({"name": "p", "query": "{text}\n{ask}", "vars": {"ask": "One word:"},
                             "variants": {"terse": {"vars": {"ask": "Word:"}}, "plain": None}})
    terse = DatasetPrompt("d", variants={"prior": "terse"})
    assert prior.for_dataset(terse).render("query", "x", False) == "x\nWord:"
    assert prior.for_dataset(DatasetPrompt("d", variants={"prior": "plain"})).render("query", "x", False) == "x\nOne word:"
    with pytest.raises(ConfigError, match=r"^dataset d asks for prior variant 'terse'.*prior 'freeret' does not define"):
        load_prior("freeret").for_dataset(terse)
    with pytest.raises(ConfigError, match=r"prior 'p' \(variant bad\): template uses undefined placeholder\(s\) nope"):
        Prior.from_dict({"name": "p", "query": "{text}", "variants": {"bad": {"query": "{text} {nope}"}}})
    with pytest.raises(ConfigError, match=r"prior 'p' \(dataset d\): template uses undefined placeholder\(s\) nope"):
        Prior.from_dict({"name": "p", "query": "{text} {query_kind}", "vars": {"query_kind": "q"}}).for_dataset(
            DatasetPrompt("d", vars={"query_kind": "{nope}"}))
    with pytest.raises(ConfigError, match=r"prior 'old': per-dataset entries \(datasets:\) are no longer read"):
        Prior.from_dict({"name": "old", "query": "{text}", "datasets": {"wordnet_rd": {"query_kind": "definition"}}})


def _plan_config(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(["method=freeret_plus_270m", *overrides]), resolve=True)


def test_a_preset_that_loses_its_demonstrations_says_so(caplog):
    """method=freeret_plus_270m (demos.k=1) on a dataset with no demo_set used to run zero-shot and say so only
    inside the result file: now a visible warning, and a one-line error under strict=true."""
    from freeret.run.plan import check

    with caplog.at_level("WARNING", logger="freeret.run.plan"):
        check(_plan_config("dataset=general_dev/wn_adj"))
    assert any("demos.k=1" in r.getMessage() and "runs zero-shot" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="strict=true"):
        check({**_plan_config("dataset=general_dev/wn_adj"), "strict": True})
    caplog.clear()
    with caplog.at_level("WARNING", logger="freeret.run.plan"):
        check({**_plan_config("dataset=wordnet_rd_dev"), "strict": True})  # names its demonstrations: nothing dropped
    assert not caplog.records


def test_the_suite_precheck_leaves_that_warning_to_the_run(caplog):
    """run_all and the experiment runner check every dataset before the model loads, then each run checks its own:
    the warning is said once, by the run, not once per check."""
    from freeret.benchmark import check_datasets

    with caplog.at_level("WARNING", logger="freeret.run.plan"):
        check_datasets(_plan_config("dataset=general_dev/wn_adj"))
    assert not caplog.records
    with pytest.raises(ConfigError, match="strict=true"):
        check_datasets({**_plan_config("dataset=general_dev/wn_adj"), "strict": True})
