"""Benchmarks: MMEB configs and loader, the experiment configs in fast mode, MMEB-V2 readers,
the WordNet meta-task sets, make_tables.py, and the mteb encoder."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from freeret.data.datasets import load_dataset
from freeret.data.mmeb import load_mmeb_subset
from freeret.data.mmeb_v2 import write_jsonl
from freeret.data.visual import frame_count, load_clip, sample_indices
from freeret.data.wordnet import WORDNET_DIR
from freeret.data.wordnet_tasks import BUILDERS, build_task
from freeret.embed.priors import Prior
from freeret.errors import DataError
from freeret.eval.metrics import retrieval_metrics
from freeret.eval.results import RunResult
from freeret.eval.tables import build_tables, load_paper, load_results, to_csv, to_markdown
from freeret.rerank.framing import Framing
from freeret.toy.smoke import build_smoke_set
from helpers import REPO, check_snapshot, compose, dataset_prompt, run_main, run_py

MMEB_CONFIGS = sorted((REPO / "conf/dataset/mmeb").glob("*.yaml"))
FAST = ["mode=fast", "logger=none", "trainer.enable_progress_bar=false", "threads=1"]
EXPERIMENTS = ["mmeb_table1", "ablation_layer", "ablation_prior", "ablation_framing", "topk", "wordnet_meta"]


# --- MMEB configs -------------------------------------------------------------------------------------

def test_mmeb_has_the_36_datasets_with_meta_tasks_and_splits():
    cfg = compose(["suite=mmeb"])
    datasets = list(cfg.benchmark.datasets.values())
    assert len(datasets) == len(MMEB_CONFIGS) == 36
    tasks = [d.meta_task for d in datasets]
    assert [tasks.count(t) for t in ("classification", "vqa", "retrieval", "grounding")] == [10, 10, 12, 4]
    assert {d.split for d in datasets} == {"test"}  # MMEB-eval; IND/OOD is the distribution
    ood = {d.name for d in datasets if d.distribution == "OOD"}
    assert ood == {"Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211", "ScienceQA", "VizWiz", "GQA",
                   "TextVQA", "OVEN", "FashionIQ", "EDIS", "Wiki-SS-NQ", "Visual7W-Pointing", "RefCOCO", "RefCOCO-Matching"}
    assert all(d.query_instruction for d in datasets)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_configs_compose(experiment):
    cfg = compose([f"experiment={experiment}"])
    assert cfg.benchmark.datasets
    if experiment == "mmeb_table1":
        assert (cfg.layer.name, cfg.prior.name, cfg.pipeline.name, cfg.framing.name, cfg.pipeline.top_k) == (
            "attn_last", "freeret", "two_stage", "mcq", 50)
    if experiment in ("ablation_layer", "ablation_prior"):
        assert cfg.pipeline.name == "embed"


def test_freeret_prior_prompt_snapshots_per_mmeb_dataset():
    prior = Prior.from_dict(compose([]).prior)
    got = {}
    for path in MMEB_CONFIGS:
        name = path.stem
        prompt = dataset_prompt(f"mmeb/{name}")
        assert {"query_kind", "target_kind"} <= set(prompt.vars), f"conf/dataset/mmeb/{name}.yaml has no task alignment"
        bound = prior.for_dataset(prompt)
        got[name] = {"query": bound.render("query", "<query>", True), "target": bound.render("target", "<target>", False)}
    check_snapshot(REPO / "tests/snapshots/mmeb_prompts.json", got)


def test_rerank_prompt_snapshots_per_mmeb_dataset_and_framing():
    """The pair prompt (user turn) every framing asks for every MMEB dataset, variants applied as a run applies them;
    ImageNet-1K asks mcq's presence question (issue 13). Renew on purpose: FREERET_UPDATE_SNAPSHOTS=1."""
    framings = {p.stem: Framing.from_dict(OmegaConf.to_container(OmegaConf.load(p)))
                for p in sorted((REPO / "conf/framing").glob("*.yaml"))}
    got = {}
    for path in MMEB_CONFIGS:
        prompt = dataset_prompt(f"mmeb/{path.stem}")
        for name, framing in framings.items():
            head, middle, tail = framing.for_dataset(prompt).split()
            got[f"{path.stem}/{name}"] = f"{head}<query>{middle}<candidate>{tail}"
    assert "Object: <candidate>" in got["ImageNet-1K/mcq"] and "Candidate: <candidate>" in got["ImageNet-A/mcq"]
    check_snapshot(REPO / "tests/snapshots/mmeb_rerank_prompts.json", got)


def _mmeb_parquet(root: Path, subset: str, with_instruction: bool = True) -> None:
    images = build_smoke_set().parent / "images"
    (root / "eval_images" / subset).mkdir(parents=True, exist_ok=True)
    for name in ("coffee", "rocket"):
        Image.open(images / f"{name}.png").save(root / "eval_images" / subset / f"{name}.png")
    inst = "<|image_1|>\nRepresent the given image for classification " if with_instruction else ""
    table = pa.Table.from_pylist([
        {"qry_text": inst, "qry_img_path": f"{subset}/{n}.png", "tgt_text": [n, other], "tgt_img_path": ["", ""]}
        for n, other in (("coffee", "rocket"), ("rocket", "coffee"))
    ])
    (root / subset).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / subset / "test-00000-of-00001.parquet")


def test_mmeb_subset_reads_the_hub_layout_and_strips_instructions(tmp_path):
    _mmeb_parquet(tmp_path, "ImageNet-1K")
    cfg = {**compose(["dataset=mmeb/ImageNet-1K"]).dataset, "root": str(tmp_path)}
    rset = load_mmeb_subset(cfg)
    assert rset.summary() == {"num_queries": 2, "num_unique_candidates": 2, "candidates_per_query": 2}
    query = rset.items[rset.rows[0].query]
    assert Path(query.image).exists() and query.text.strip() == "Represent the given image for classification"
    stripped = load_mmeb_subset({**cfg, "strip_instruction": True})
    assert stripped.items[stripped.rows[0].query].text == ""


def test_mmeb_missing_data_and_missing_images_are_one_line_errors(tmp_path):
    proc = run_py(["dataset=mmeb/ImageNet-1K", f"paths.mmeb_root={tmp_path / 'none'}", "logger=none"], tmp_path / "run")
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "ImageNet-1K" in err[0] and "paths.mmeb_root" in err[0] and "Traceback" not in proc.stderr
    _mmeb_parquet(tmp_path / "noimg", "VOC2007")
    for f in (tmp_path / "noimg" / "eval_images" / "VOC2007").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="images.zip"):
        load_mmeb_subset({**compose(["dataset=mmeb/VOC2007"]).dataset, "root": str(tmp_path / "noimg")})


# --- experiments end to end in fast mode ----------------------------------------------------------------

def test_mmeb_table1_fast_runs_all_36_datasets_and_makes_the_table(tmp_path):
    proc = run_py(["-m", "experiment=mmeb_table1", *FAST, "benchmark.limit=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payloads = load_results(tmp_path)
    assert len(payloads) == 36 and all(p.metrics["rerank"] for p in payloads)
    assert {p.task.meta_task for p in payloads} == {"classification", "vqa", "retrieval", "grounding"}
    table = run_main("experiments/make_tables.py", [str(tmp_path)])
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if line.startswith("| setting · split"))
    for col in ("Classification", "VQA", "Retrieval", "Grounding", "IND", "OOD", "Overall"):
        assert col in header
    assert (tmp_path / "tables" / "mmeb.csv").exists()


@pytest.mark.parametrize("experiment,swept", [
    ("ablation_layer", ("layer", {"mlp_last", "attn_last", "mlp_prev", "mlp_prev2"})),
    ("ablation_prior", ("prior", {"e5v", "grounding", "grounding_noise", "freeret"})),
    ("ablation_framing", ("framing", {"right_wrong", "yes_no", "true_false", "mcq"})),
    ("topk", ("top_k", {2, 3})),  # the command line narrows the swept K values
])
def test_ablations_fast(experiment, swept, tmp_path):
    extra = ["pipeline.top_k=2,3"] if experiment == "topk" else []
    proc = run_py(["-m", f"experiment={experiment}", *FAST, "benchmark.limit=2", "benchmark.max_per_task=1", *extra],
                  tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payloads = load_results(tmp_path)
    key, values = swept
    if key == "layer":
        got = {p.layer.label for p in payloads}
    elif key == "top_k":
        got = {p.rerank.top_k for p in payloads}
    else:
        got = {getattr(p, key) for p in payloads}
    assert got == values
    assert len(payloads) == 4 * len(values)  # one dataset per meta-task for each swept value


def test_wordnet_meta_fast_both_methods(tmp_path):
    proc = run_py(["-m", "experiment=wordnet_meta", *FAST, "benchmark.limit=2", "pipeline.top_k=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payloads = load_results(tmp_path)
    assert len(payloads) == 10
    assert {(p.layer.label, p.prior, p.pipeline) for p in payloads} == {
        ("attn_last", "freeret", "two_stage"), ("mlp_last_normed", "e5v", "embed")}


# --- MMEB-V2 readers ----------------------------------------------------------------------------------

def _frames(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (32, 32), (i * 20 % 256, 100, 200)).save(folder / f"frame_{i:03d}.png")


def test_clip_sampling():
    assert sample_indices(16) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert sample_indices(5) == [0, 1, 2, 3, 4]
    assert sample_indices(80, 8) == [5, 15, 25, 35, 45, 55, 65, 75]
    with pytest.raises(DataError):
        sample_indices(0)


def test_video_task_end_to_end(tmp_path):
    task = tmp_path / "v2" / "toyvideo"
    for i in range(3):
        _frames(task / "clips" / f"clip{i}", 12 + i)
    frames = load_clip(str(task / "clips" / "clip0"))
    assert len(frames) == 8 and frame_count(str(task / "clips" / "clip0")) == 8
    # GIF clips sample their own frames too
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=40)
    assert len(load_clip(str(gif))) == 8
    captions = ["a red clip", "a green clip", "a blue clip"]
    rows = [{"id": f"v{i}", "qry_text": "", "qry_video_path": f"clips/clip{i}", "tgt_text": captions[i:] + captions[:i],
             "tgt_img_path": ["", "", ""]} for i in range(3)]
    write_jsonl(task / "toyvideo.jsonl", rows)
    proc = run_py(["model=tiny_qwen2vl", "dataset=mmeb_v2/video", "dataset.task=toyvideo", f"paths.mmeb_v2_root={tmp_path / 'v2'}",
                   "pipeline=two_stage", "pipeline.top_k=2", "logger=none", "trainer.enable_progress_bar=false"], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = RunResult.read(tmp_path / "run/results/toyvideo.json")
    assert result.main_score_name == "hit@1" and result.counts.num_queries == 3


def test_visdoc_task_multiple_positives_and_ndcg_at_5(tmp_path):
    task = tmp_path / "v2" / "toydoc"
    images = build_smoke_set().parent / "images"
    (task / "pages").mkdir(parents=True)
    names = ["astronaut", "coffee", "rocket", "coins"]
    for n in names:
        Image.open(images / f"{n}.png").save(task / "pages" / f"{n}.png")
    write_jsonl(task / "queries.jsonl", [{"id": "q1", "text": "space travel"}, {"id": "q2", "text": "money"},
                                         {"id": "q3", "text": "unjudged"}])
    write_jsonl(task / "corpus.jsonl", [{"id": n, "image": f"pages/{n}.png"} for n in names])
    write_jsonl(task / "qrels.jsonl", [{"query_id": "q1", "corpus_id": "astronaut", "score": 1},
                                       {"query_id": "q1", "corpus_id": "rocket", "score": 1},
                                       {"query_id": "q2", "corpus_id": "coins", "score": 1},
                                       {"query_id": "q2", "corpus_id": "coffee", "score": 0}])
    cfg = {**compose(["dataset=mmeb_v2/visdoc", "dataset.task=toydoc", f"paths.mmeb_v2_root={tmp_path / 'v2'}"]).dataset}
    rset = load_dataset(cfg)
    assert [r.n_positive for r in rset.rows] == [2, 1]  # q3 has no judged page
    assert rset.items[rset.rows[0].candidates[1]].image.endswith("rocket.png")
    proc = run_py(["model=tiny_qwen2vl", "dataset=mmeb_v2/visdoc", "dataset.task=toydoc", f"paths.mmeb_v2_root={tmp_path / 'v2'}",
                   "logger=none", "trainer.enable_progress_bar=false"], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = RunResult.read(tmp_path / "run/results/toydoc.json")
    assert result.main_score_name == "ndcg@5" and result.main_score == result.metrics["embed"]["ndcg@5"]


def test_metrics_with_two_positives_match_hand_computation():
    # positives are candidates 0 and 1; ranking: cand2 > cand0 > cand3 > cand1
    scores = torch.tensor([0.8, 0.1, 0.9, 0.5])
    m = retrieval_metrics([scores], [2])
    dcg = 1 / torch.log2(torch.tensor(3.0)) + 1 / torch.log2(torch.tensor(5.0))
    idcg = 1 + 1 / torch.log2(torch.tensor(3.0))
    assert m["hit@1"] == 0.0 and m["mrr"] == pytest.approx(0.5)
    assert m["ndcg@5"] == pytest.approx(float(dcg / idcg), abs=1e-6)
    # a tie with a positive goes against it, as with one positive
    assert retrieval_metrics([torch.tensor([0.5, 0.5, 0.5])], [2])["hit@1"] == 0.0


# --- WordNet meta-task benchmark ------------------------------------------------------------------------

@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").exists(), reason="WordNet 3.0 (wordnet-base) not installed")
@pytest.mark.parametrize("task", list(BUILDERS))
def test_shipped_wordnet_tasks_rebuild_exactly(task):
    shipped = [json.loads(line) for line in gzip.open(REPO / f"data/wordnet_tasks/{task}.jsonl.gz", "rt")]
    assert build_task(task, n=100, seed=0) == shipped


@pytest.mark.parametrize("task", list(BUILDERS))
def test_wordnet_tasks_are_well_formed(task):
    cfg = compose([f"dataset=wordnet/{task.replace('wordnet_', '')}"]).dataset
    rset = load_dataset(cfg)
    rows = [json.loads(line) for line in gzip.open(REPO / f"data/wordnet_tasks/{task}.jsonl.gz", "rt")]
    assert len(rows) == 100 and len({r["id"] for r in rows}) == 100
    for r in rows:
        assert len(set(r["tgt_text"])) == len(r["tgt_text"])  # positive appears once, no duplicate candidates
    if task == "qa_blank":
        assert all("___" in r["qry_text"] for r in rows)
    if task.startswith("cls_"):
        assert rset.num_candidates == len(rows[0]["tgt_text"])  # classification: the label set


# --- tables -------------------------------------------------------------------------------------------

def _payload(dataset: str, meta: str, split: str, score: float, model: str = "qwen25vl_7b") -> dict:
    """A result file as written before RunResult (schema 1: no schema_version, MMEB's IND/OOD in task.split)."""
    return {"dataset": dataset, "main_score": score, "main_score_name": "hit@1", "pipeline": "two_stage",
            "metrics": {"embed": {"hit@1": 0.0}, "rerank": {"hit@1": score}}, "framing": "mcq", "prior": "freeret",
            "task": {"benchmark": "mmeb", "meta_task": meta, "split": split},
            "model": {"name": model}, "layer": {"label": "attn_last"}, "rerank": {"top_k": 50}}


def test_tables_average_meta_tasks_and_compare_with_the_paper():
    payloads = [_payload("A", "classification", "IND", 0.5), _payload("B", "classification", "OOD", 0.7),
                _payload("C", "vqa", "IND", 0.9), _payload("D", "grounding", "OOD", 0.1)]
    (table,) = build_tables(map(RunResult.from_dict, payloads))
    (row,) = table.rows
    assert row["values"]["Classification"] == pytest.approx(60.0)
    assert row["values"]["IND"] == pytest.approx(70.0) and row["values"]["OOD"] == pytest.approx(40.0)
    assert row["values"]["Overall"] == pytest.approx(55.0)
    paper = load_paper([REPO / "data/paper/freeret.yaml"])["mmeb"]
    md = to_markdown(table, paper)
    assert "paper (Table 1)" in md and "69.4" in md and "-9.4" in md  # 60.0 - 69.4
    assert "qwen25vl_7b,attn_last,last,freeret,dense,none,two_stage,mcq,50,Overall,55.0,70.7,-15.70" in to_csv(table, paper)
    assert "### mmeb (test)" in md


def test_run_result_round_trips_and_reads_schema_1_files():
    """RunResult to/from JSON; a result file written before it (schema 1) reads, its IND/OOD moved to distribution."""
    old = _payload("A", "classification", "OOD", 0.5)
    result = RunResult.from_dict(old)
    assert (result.schema_version, result.task.split, result.task.distribution) == (2, "test", "OOD")
    assert result.rerank.top_k == 50 and result.score("embed") == 0.0 and result.score() == 0.5
    written = json.loads(json.dumps(result.to_dict()))
    assert written["schema_version"] == 2 and written["task"] == {
        "benchmark": "mmeb", "meta_task": "classification", "split": "test", "distribution": "OOD"}
    assert RunResult.from_dict(written) == result
    with pytest.raises(DataError, match="schema_version 3; this FreeRet reads up to 2"):
        RunResult.from_dict({**old, "schema_version": 3})


def test_tables_say_which_split_and_never_average_dev_with_test():
    test = RunResult.from_dict(_payload("A", "classification", "IND", 0.5))
    dev = RunResult.from_dict({**_payload("A_dev", "classification", "dev", 0.9)})
    (table,) = build_tables([test, dev])
    assert [(row["split"], row["values"]["Overall"]) for row in table.rows] == [("dev", 90.0), ("test", 50.0)]
    md = to_markdown(table, load_paper([REPO / "data/paper/freeret.yaml"])["mmeb"])
    assert md.startswith("### mmeb (dev, test)") and "mcq rerank top-50 · dev |" in md and "top-50 · test |" in md
    assert md.count("paper (Table 1)") == 1  # published numbers are test numbers: never beside a dev row
    assert to_csv(table).splitlines()[1].startswith("mmeb,dev,qwen25vl_7b,")


def test_make_tables_without_results_is_one_line(tmp_path):
    proc = run_main("experiments/make_tables.py", [str(tmp_path)])
    assert proc.returncode == 2 and proc.stderr.startswith("error: no results/*.json")


# --- mteb ---------------------------------------------------------------------------------------------

def test_mteb_encoder_runs_an_mteb_task_and_matches_freeret_embeddings(smollm):
    mteb = pytest.importorskip("mteb")
    from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask

    from freeret.data.datamodule import PromptCollator
    from freeret.data.retrieval_set import Item
    from freeret.embed.layers import LayerSpec
    from freeret.interop.mteb import FreeRetEncoder

    cfg = compose(["prior=e5v"])
    layer, prior = LayerSpec.from_dict(cfg.layer), Prior.from_dict(cfg.prior)
    encoder = FreeRetEncoder(smollm, layer, prior)
    result = mteb.evaluate(encoder, MockRetrievalTask(), cache=None, show_progress_bar=False)
    score = result.task_results[0].scores["test"][0]["main_score"]
    assert 0.0 <= score <= 1.0
    texts = ["a small domesticated carnivore", "a vehicle with two wheels"]
    got = torch.as_tensor(encoder.encode([{"text": texts}], prompt_type="document"))
    items = [Item.make("target", t, None) for t in texts]
    batch = PromptCollator(smollm, prior)(items)
    want = smollm.embed(batch["inputs"], layer).float()
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.9999


def test_tables_can_show_stage_one_and_another_metric():
    p = _payload("A", "classification", "IND", 0.5)
    p["metrics"] = {"embed": {"hit@1": 0.2, "hit@10": 0.9}, "rerank": {"hit@1": 0.5, "hit@10": 0.9}}
    r = RunResult.from_dict(p)
    assert build_tables([r])[0].rows[0]["values"]["Overall"] == pytest.approx(50.0)
    assert build_tables([r], stage="embed")[0].rows[0]["values"]["Overall"] == pytest.approx(20.0)
    assert build_tables([r], stage="embed", metric="hit@10")[0].rows[0]["values"]["Overall"] == pytest.approx(90.0)
    with pytest.raises(DataError, match="stage"):
        build_tables([RunResult.from_dict({**p, "metrics": {"embed": p["metrics"]["embed"]}})], stage="rerank")
