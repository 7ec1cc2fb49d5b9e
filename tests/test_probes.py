"""Probes: values against direct computations, each probe end to end (tiny model and a real SmolLM2 slice),
the Hydra entry points, W&B logging calls, and the notebooks executing on results of the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf
from torch.nn.functional import cosine_similarity

from freeret.data.retrieval_set import Item
from freeret.data.wordnet import load_synsets
from freeret.embed.layers import LayerSpec
from freeret.embed.priors import Prior
from freeret.probes import anisotropy, framing_sensitivity, lexical_bias
from freeret.probes.run_probe import log_probe, run_probe
from freeret.probes.sweep import point_labels, sweep_items
from freeret.rerank.framing import Framing
from helpers import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
WORDS = ["dog", "cat", "river", "quickly", "blue", "justice"]


def conf(group: str, name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(REPO / "conf" / group / f"{name}.yaml"), resolve=True)


def probe_config(overrides: list[str], run_dir: Path) -> dict:
    """conf/probe.yaml composed as the entry points do, with framing names resolved."""
    sys.path.insert(0, str(REPO / "probes"))
    from _entry import resolve_framings

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(hydra_compose(config_name="probe", overrides=overrides), resolve=True)
    cfg["run_dir"] = str(run_dir)
    resolve_framings(cfg)
    return cfg


# -- values against direct computations --------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_sweep(smollm):
    items = [Item.make("target", w, None) for w in WORDS]
    return items, sweep_items(smollm, items, Prior.from_dict(conf("prior", "e5v")), batch_size=4)


def test_sweep_points_equal_single_point_capture(smollm, smol_sweep):
    items, sweep = smol_sweep
    n = smollm.num_layers
    assert sweep.labels == point_labels(n) and sweep.states.shape[:2] == (1 + 2 * n, len(items))
    prompts = [smollm.render(Prior.from_dict(conf("prior", "e5v")).render("target", it.text, False))
               for it in items]
    inputs = smollm.inputs(prompts)
    for point, idx in (("attn", n - 1), ("mlp", n - 2), ("attn", 3)):
        direct = smollm.embed(inputs, LayerSpec(point, idx))
        got = sweep.states[sweep.index(f"{point}_{idx}")]
        assert cosine_similarity(got, direct, dim=-1).min() > 0.9999, (point, idx)  # other batches, other padding


def test_alpha_and_beta_match_direct_computation(smollm, smol_sweep):
    _, sweep = smol_sweep
    n = smollm.num_layers
    attn_last, mlp_last = sweep.states[sweep.index(f"attn_{n - 1}")], sweep.states[sweep.index(f"mlp_{n - 1}")]
    direct_alpha = sum(float(torch.dot(a, b) / (a.norm() * b.norm())) for a, b in zip(mlp_last, attn_last)) / len(WORDS)
    assert lexical_bias.alpha(sweep.states)[-1] == pytest.approx(direct_alpha, abs=1e-5)
    head = smollm.model.get_output_embeddings().weight.detach()
    with torch.no_grad():
        full = smollm.model(**smollm.inputs([smollm.render(f"{WORDS[0]}\nSummary above sentence in one word:")]))
    token = int(full.logits[0, -1].argmax())
    assert int(sweep.next_token[0]) == token  # next token from the model's own output logits
    direct_beta = float(cosine_similarity(mlp_last[0], head[token].float(), dim=0))
    one = lexical_bias.beta(sweep.states[:, :1], head, sweep.next_token[:1])
    assert one[-1] == pytest.approx(direct_beta, abs=1e-5)


def test_logit_lens_at_the_last_point_is_the_model_prediction(smollm, smol_sweep):
    _, sweep = smol_sweep
    logits = lexical_bias.lens_logits(smollm, sweep.states[-1])
    assert torch.equal(logits.argmax(-1), sweep.next_token)
    lens = lexical_bias.logit_lens(smollm, sweep, [0, 1], k=3)
    assert set(lens) == set(sweep.labels) and all(len(row) == 3 for rows in lens.values() for row in rows)


def test_anisotropy_measures_against_brute_force():
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    z = torch.nn.functional.normalize(x, dim=-1)
    brute = sum(float(z[i] @ z[j]) for i in range(7) for j in range(7) if i != j) / 42
    assert anisotropy.mean_pairwise_cosine(x) == pytest.approx(brute, abs=1e-6)
    rank_one = torch.outer(torch.arange(6.0), torch.ones(4)) + 3.0
    assert anisotropy.top_pc_share(rank_one) == pytest.approx(1.0)
    assert anisotropy.effective_rank(rank_one) == pytest.approx(1.0, abs=1e-6)
    assert anisotropy.mean_pairwise_cosine(torch.ones(3, 4)) == pytest.approx(1.0)
    isotropic = torch.linalg.qr(torch.randn(64, 64))[0][:, :8] * 10  # 64 rows spread over 8 orthogonal directions
    assert anisotropy.effective_rank(isotropic) > 6.5


def test_synonym_pairs_are_seeded_wordnet_synonyms():
    pairs = lexical_bias.synonym_pairs(250, seed=0)
    assert len(pairs) == 250 and pairs == lexical_bias.synonym_pairs(250, seed=0) != lexical_bias.synonym_pairs(250, seed=1)
    words = [w for p in pairs for w in p]
    assert len(set(words)) == 500
    synsets = [set(s.lemmas) for pos in lexical_bias.POS for s in load_synsets(pos)]
    assert all(any({a, b} <= lemmas for lemmas in synsets) for a, b in pairs[:40])
    rnd = lexical_bias.random_pairs(250, seed=0)
    assert all(i // 2 != j // 2 for i, j in rnd)  # never the two words of one pair


def test_option_swap():
    mcq, yes_no = Framing.from_dict(conf("framing", "mcq")), Framing.from_dict(conf("framing", "yes_no"))
    swapped = framing_sensitivity.swap_options(mcq)
    assert swapped.match == "B" and "\nA. No, the candidate" in swapped.template and "\nB. Yes, the candidate" in swapped.template
    assert framing_sensitivity.swap_options(swapped).template == mcq.template
    swapped = framing_sensitivity.swap_options(yes_no)
    assert swapped.match == "Yes" and swapped.template.endswith("Answer No or Yes.")
    right = framing_sensitivity.swap_options(Framing.from_dict(conf("framing", "right_wrong")))
    assert right.template.endswith("Is it right or wrong that the candidate matches the query? Answer Wrong or Right.")


class RecordingLogger:
    """Stands in for the W&B logger: records what would be logged."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


# -- end to end --------------------------------------------------------------------------------------
def test_probes_end_to_end_on_a_tiny_model(tmp_path):
    cfg = probe_config(["model=tiny_qwen2vl", "dataset=smoke_mm", "logger=none", "probe.lexical_bias.n_pairs=4",
                        "probe.anisotropy.n_items=6", "probe.framing_sensitivity.n_queries=2",
                        "probe.framing_sensitivity.framings=[mcq,yes_no]"], tmp_path)
    n = 4  # tiny decoders have 4 layers
    ani = run_probe("anisotropy", cfg)
    assert [r["point"] for r in ani["profile"]] == point_labels(n) and ani["n_items"] == 6
    lex = run_probe("lexical_bias", cfg)
    assert len(lex["profile"]) == 1 + 2 * n and lex["profile"][0]["alpha"] is None
    assert all(-1 <= r["beta"] <= 1 for r in lex["profile"]) and set(lex["claims"]) > {"alpha_collapses_at_final_mlp"}
    fr = run_probe("framing_sensitivity", cfg)
    assert [r["framing"] for r in fr["records"]] == ["mcq", "yes_no"] and fr["n_pairs"] == 4
    for rec in fr["records"]:
        assert sum(rec["option_bias"].values()) == pytest.approx(1.0, abs=1e-5)
        assert 0 <= rec["flip_rate"] <= 1 and 0 <= rec["accuracy"] <= 1
    for name in ("anisotropy", "lexical_bias", "framing_sensitivity"):
        payload = json.loads((tmp_path / "probes" / f"{name}.json").read_text())
        assert payload["model"]["name"] == "tiny_qwen2vl" and payload["environment"]["packages"]["torch"]
        assert payload["figures"] and all((tmp_path / "probes" / f).stat().st_size > 5000 for f in payload["figures"])
    logger = RecordingLogger()
    log_probe(logger, "lexical_bias", lex, [tmp_path / "probes" / f for f in lex["figures"]])
    names = [c[0] for c in logger.calls]
    assert names.count("log_metrics") == len(lex["profile"]) + 1 and "log_table" in names and "log_image" in names


def test_flip_rate_is_the_share_of_changed_calls(smollm):
    rows = [(Item.make("query", q, None), Item.make("target", p, None), Item.make("target", n, None))
            for q, p, n in [("a domestic animal that barks", "dog", "violin")]]
    mcq = Framing.from_dict(conf("framing", "mcq"))
    rec = framing_sensitivity.framing_record(smollm, mcq, rows, content_free=[""])
    from freeret.rerank.scorers.choice import Choice

    _, calls = framing_sensitivity.match_calls(Choice(smollm, mcq), rows)
    _, swapped = framing_sensitivity.match_calls(Choice(smollm, framing_sensitivity.swap_options(mcq)), rows)
    assert rec["flip_rate"] == pytest.approx(float((calls != swapped).float().mean()))
    assert rec["accuracy"] == pytest.approx(float((calls == torch.tensor([True, False])).float().mean()))


@pytest.fixture(scope="module")
def smol_results(tmp_path_factory):
    """Each probe on a small slice with the real SmolLM2: lexical bias through its Hydra entry point, the others in process."""
    root = tmp_path_factory.mktemp("probe_runs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(REPO / "probes" / "lexical_bias.py"), "logger=none", "threads=2", "prior=e5v",
                           "probe.lexical_bias.n_pairs=6", f"hydra.run.dir={root / 'lexical_bias'}"],
                          capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1].startswith("lexical_bias: model=smollm2_135m")  # after any log line
    out = {"lexical_bias": json.loads((root / "lexical_bias" / "probes" / "lexical_bias.json").read_text())}
    in_process = {"anisotropy": ["probe.anisotropy.n_items=8", "prior=e5v"],
                  "framing_sensitivity": ["probe.framing_sensitivity.n_queries=2",
                                          "probe.framing_sensitivity.framings=[mcq,true_false]",
                                          "probe.framing_sensitivity.content_free=['']"]}
    for probe, extra in in_process.items():
        out[probe] = run_probe(probe, probe_config(["logger=none", *extra], root / probe))
        assert (root / probe / "probes" / f"{probe}.json").is_file()
    return root, out


def test_real_smollm_slice_end_to_end(smol_results):
    _, res = smol_results
    lex = res["lexical_bias"]
    assert lex["n_pairs"] == 6 and lex["model"]["num_layers"] == 30 and lex["profile"][-1]["short"] == "mlp_last"
    assert lex["summary"]["alpha@mlp_last"] == lex["profile"][-1]["alpha"]
    assert len(res["anisotropy"]["profile"]) == 61
    assert [r["framing"] for r in res["framing_sensitivity"]["records"]] == ["mcq", "true_false"]


def test_entry_point_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "probes" / "framing_sensitivity.py"), "logger=none",
                           "probe.framing_sensitivity.framings=[nope]", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path, timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: framing 'nope' is not in conf/framing"), proc.stderr


# -- notebooks ---------------------------------------------------------------------------------------
def test_committed_notebooks_have_no_outputs():
    assert {p.stem for p in NOTEBOOKS} >= {"anisotropy", "lexical_bias", "framing_sensitivity"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs before committing"


@pytest.mark.parametrize("name", ["anisotropy", "lexical_bias", "framing_sensitivity"])
def test_notebook_executes_on_real_results(name, smol_results, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    root, _ = smol_results
    monkeypatch.setenv("FREERET_RESULTS", str(root))
    monkeypatch.setenv("FREERET_FIGURES", str(tmp_path))
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    assert list(tmp_path.glob(f"{name}_smollm2_135m_*.png"))
    shown = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.get("output_type") == "display_data"]
    assert shown and all("image/png" in o["data"] for o in shown)


def test_lexical_claims_need_a_real_collapse():
    from freeret.probes.run_probe import lexical_claims

    def profile(alphas, betas):
        return [{"point": f"p{i}", "alpha": a, "beta": b, "synonym_cosine": 0.9, "synonym_minus_random": 0.1}
                for i, (a, b) in enumerate(zip(alphas, betas))]

    paper = lexical_claims(profile([0.95] * 5 + [0.2], [0.0] * 5 + [0.5]))
    assert paper["alpha_collapses_at_final_mlp"] and paper["beta_jumps_at_final_mlp"]
    flat = lexical_claims(profile([0.99, 0.98, 0.99, 0.98, 0.99, 0.975], [0.1, 0.12, 0.1, 0.12, 0.1, 0.13]))
    assert not flat["alpha_collapses_at_final_mlp"] and not flat["beta_jumps_at_final_mlp"]
