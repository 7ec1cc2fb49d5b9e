"""Projected wall time of a full benchmark, per stage, per scorer and per K, from measured token rates.

    python experiments/project_cost.py --suite mmeb --model qwen2vl_7b --device h100 \
        --scorers choice query_likelihood candidate_likelihood bidirectional --k 10 50
    python experiments/project_cost.py --suite wordnet_meta --model qwen2vl_7b --device h100 --k 10 50
    python experiments/project_cost.py ... --rates docs/results/bench/rerank_scorers.json --mfu 0.4

time = model FLOPs / (device peak x MFU). The FLOPs are counted for the target model (decoder: bench_embed's
``flops_per_sequence``; Qwen2-VL's vision tower for image items) over the suite's own items and pairs; the MFU is
the one measured on the run path of the rates files (this CPU's benchmarks, or the GPU check's), used as a
stand-in, unless ``--mfu`` names one; ``--mfu-range`` adds the hours at two more. This is the same as scaling a
measured rate: rate_B = rate_A x (FLOPs/token_A / FLOPs/token_B) x (peak_B x MFU_B) / (peak_A x MFU_A)
(:func:`scale_rate`; the printed table gives both rates).

Inputs (``experiments/cost_inputs.yaml``, each marked measured or assumed with its source): device peaks, model
shapes, MFU stand-ins, MMEB's counts (its files are not in this repo), image sizes. Rates (``--rates``, any mix):
- stage 1: an embedding benchmark JSON (experiments/bench_embed.py; default
  docs/results/bench/embed_qwen2vl_2b_dims_28layers.json): the freeret path's MFU and matmul rate;
- stage 2: the scorers JSON of experiments/bench_rerank.py --scorers (default
  docs/results/bench/rerank_scorers.json): per scorer and K, ``paths.{run|today|naive}.tokens_per_pair``,
  ``tokens_per_s`` and ``mfu`` (the run path is used; ``minimum_tokens_per_pair`` is shown beside it);
- or the GPU check's gpu_check.json (its bench_embed and bench_rerank_text figures).
A missing file, or a scorer it lacks, falls back to the inputs file's stated assumptions, and the output says so.

Counts: the WordNet and general suites are counted from the shipped data (queries, candidates, unique items), their
prompts rendered with the FreeRet prior on Qwen2-VL's chat template and tokenized (stand-in tokenizer: SmolLM2's
BPE with the Qwen-VL special tokens, as freeret/bench_models.py); MMEB from the inputs file (1,000 queries; 1,000
candidates, or the class labels), its instructions tokenized from the dataset configs, its content lengths and
image sizes assumed. Visual tokens: Qwen2-VL's smart_resize under the model config's min/max pixels.
Stage 2 per pair on the run path: the query's prefix once per query, then each pair's suffix; text tokens from the
scorer's measured tokens per pair (fitted as suffix + prefix / K over the measured K), an image query's visual
tokens in the shared prefix (or per pair when the scorer cannot share the query), an image candidate's in every pair.
A scorer is not projected on a dataset whose query or candidate kind it does not take (it stops there before any
weights load: docs/rerankers.md), and the table says on how many datasets it runs.
Writes JSON and a bar plot under outputs/bench/.
"""
# No ``from __future__ import annotations``: the tests load this file as a module that is not in sys.modules,
# where dataclasses cannot resolve string annotations.

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from freeret.bench import BENCH_OUT, bar_chart, parser, write
from freeret.paths import repo_root

HERE = Path(__file__).resolve().parent
INPUTS = HERE / "cost_inputs.yaml"
BENCH = repo_root() / "docs" / "results" / "bench"
DEFAULT_EMBED_RATES = BENCH / "embed_qwen2vl_2b_dims_28layers.json"
DEFAULT_RERANK_RATES = BENCH / "rerank_scorers.json"
RUN_PATHS = ("run", "today", "fast")  # the stage-2 path whose rate is used, in order of preference
DEFAULT_SCORERS = ("choice", "query_likelihood", "candidate_likelihood", "bidirectional")


def flops_per_sequence(w: Mapping[str, int], s: int, early_exit: bool, head: bool, start: int = 0) -> float:
    """The repo's decoder FLOP count (freeret.bench when it has it, else experiments/bench_embed.py)."""
    from freeret.bench import flops_per_sequence as count

    return count(dict(w), s, early_exit, head, start)


# ---------------------------------------------------------------------------------------------------- inputs


def load_inputs(path: Path = INPUTS) -> dict[str, Any]:
    """The inputs file as a dict."""
    return yaml.safe_load(path.read_text())


def value(entry: Any) -> Any:
    """An entry's value ({value, status, source}), or the entry itself."""
    return entry["value"] if isinstance(entry, Mapping) and "value" in entry else entry


def provenance(inputs: Mapping[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """Every {value, status, source} entry of the inputs, flattened with its dotted key."""
    out = []
    for key, entry in inputs.items():
        name = f"{prefix}{key}"
        if isinstance(entry, Mapping) and "status" in entry:
            out.append({"input": name, "value": entry.get("value"), "status": entry["status"],
                        "source": " ".join(str(entry.get("source", "")).split())})
        elif isinstance(entry, Mapping):
            out.extend(provenance(entry, f"{name}."))
    return out


def decoder_widths(text: Mapping[str, int]) -> dict[str, int]:
    """flops_per_sequence's widths from a model's text shape."""
    return {"layers": text["layers"], "d": text["d"], "ff": text["ff"], "q": text["heads"] * text["head_dim"],
            "kv": text["kv_heads"] * text["head_dim"], "vocab": text["vocab"]}


def vision_flops(tokens: int, v: Mapping[str, int] | None, d_text: int) -> float:
    """Qwen2-VL ViT forward FLOPs for one image of ``tokens`` merged visual tokens (merge^2 patches each).

    Per patch: patch embedding 2*(3*2*p*p)*e (two temporal frames), then per block 2*(4*e^2 + 2*e*mlp) (qkv,
    proj, fc1, fc2) and full attention over the image's n patches, 4*e*n; per merged token the merger MLP
    2*(m*e*m*e + m*e*d_text) with m = merge^2. Norms and activations not counted (as for the decoder)."""
    if not v or tokens <= 0:
        return 0.0
    e, m = v["embed"], v["merge"] ** 2
    n = tokens * m
    per_patch = 2 * (3 * 2 * v["patch"] ** 2) * e + v["depth"] * (2 * (4 * e * e + 2 * e * v["mlp"]) + 4 * e * n)
    return n * per_patch + tokens * 2 * (m * e * m * e + m * e * d_text)


def visual_tokens(height: int, width: int, model_name: str) -> int:
    """Qwen2-VL's visual tokens for an image of this size under ``conf/model/<model>.yaml``'s min/max pixels
    (transformers' smart_resize: sides rounded to 28 px, area within the bounds; one token per 28 x 28)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    cfg = yaml.safe_load((repo_root() / "conf" / "model" / f"{model_name}.yaml").read_text())
    h, w = smart_resize(height, width, factor=28, min_pixels=cfg.get("min_pixels") or 56 * 56,
                        max_pixels=cfg.get("max_pixels") or 28 * 28 * 1280)
    return (h // 28) * (w // 28)


def scale_rate(rate_a: float, flops_token_a: float, flops_token_b: float, peak_a: float, peak_b: float,
               mfu_a: float, mfu_b: float) -> float:
    """rate_B = rate_A x (FLOPs/token_A / FLOPs/token_B) x (peak_B x MFU_B) / (peak_A x MFU_A)."""
    return rate_a * (flops_token_a / flops_token_b) * (peak_b * mfu_b) / (peak_a * mfu_a)


def hours(flops: float, peak_flops: float, mfu: float) -> float:
    """Wall hours of ``flops`` at ``mfu`` of ``peak_flops`` (FLOP/s)."""
    return flops / (peak_flops * mfu) / 3600


# ---------------------------------------------------------------------------------------------------- rates


@dataclass
class Stage1Rate:
    """Stage 1's measured run path: MFU, tokens/s and the reference peak (FLOP/s) it was measured against."""

    mfu: float | None = None
    tokens_per_s: float | None = None
    flops_per_token: float | None = None
    peak_flops: float | None = None
    device: str | None = None
    model: str | None = None
    source: str | None = None


@dataclass
class Stage2Point:
    """One scorer at one K on the rates file's run path."""

    k: int
    tokens_per_pair: float
    minimum_tokens_per_pair: float | None
    tokens_per_s: float | None
    mfu: float | None
    path: str


@dataclass
class Rates:
    """What the rates files gave, and the notes on what fell back to assumptions."""

    stage1: Stage1Rate = field(default_factory=Stage1Rate)
    stage2: dict[str, list[Stage2Point]] = field(default_factory=dict)
    stage2_peak_flops: float | None = None
    stage2_device: str | None = None
    stage2_model: str | None = None
    stage2_source: str | None = None
    notes: list[str] = field(default_factory=list)


def _embed_rate(data: Mapping[str, Any], source: str) -> Stage1Rate:
    """Stage 1 from a bench_embed.py JSON: the freeret path."""
    got = data.get("results", {}).get("freeret", {})
    mfu = (data.get("mfu") or {}).get("freeret") or {}
    tps = got.get("tokens_per_s") or (got["useful_tokens"] / got["seconds"] if got.get("seconds") else None)
    per_token = mfu["model_gflops"] * 1e9 / tps if mfu.get("model_gflops") and tps else None
    return Stage1Rate(mfu=mfu.get("mfu"), tokens_per_s=tps, flops_per_token=per_token,
                      peak_flops=mfu["matmul_gflops"] * 1e9 if mfu.get("matmul_gflops") else None,
                      device=data.get("device", "cpu"), model=(data.get("model") or {}).get("name"), source=source)


def _stage2_points(data: Mapping[str, Any]) -> tuple[dict[str, list[Stage2Point]], list[str]]:
    """Per scorer, its measured K points (the scorers schema; or the plain choice bench with ``work`` counts)."""
    points: dict[str, list[Stage2Point]] = {}
    skipped = []
    for r in data.get("results", []):
        scorer = r.get("scorer", "choice")
        paths = r.get("paths") or {}
        name = next((p for p in RUN_PATHS if p in paths), None)
        if name:
            p = paths[name]
            point = Stage2Point(r["k"], p["tokens_per_pair"], r.get("minimum_tokens_per_pair"), p.get("tokens_per_s"),
                                p.get("mfu"), name)
        elif "work" in r and r.get("pairs"):  # bench_rerank.py's choice case: tokens counted by a decoder hook
            phases = (r.get("tokens_per_s") or {}).get("fast") or {}
            tokens, secs = sum(v["tokens"] for v in phases.values()), sum(v["seconds"] for v in phases.values())
            point = Stage2Point(r["k"], r["work"]["fast"]["tokens"] / r["pairs"], None,
                                tokens / secs if secs else None, None, "fast")
        else:
            skipped.append(f"{scorer} K={r.get('k')}")
            continue
        points.setdefault(scorer, []).append(point)
    return points, skipped


def shown(path: Path) -> str:
    """A path as the output shows it: relative to the repository where it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


def load_rates(paths: Sequence[Path]) -> Rates:
    """Read every rates file (embedding JSON, scorers JSON or gpu_check.json); note each missing one."""
    rates = Rates()
    for path in paths:
        path = Path(path)
        if not path.exists():
            rates.notes.append(f"rates file {shown(path)} not found: what it would give falls back to the assumptions "
                               f"of {INPUTS.name}")
            continue
        data = json.loads(path.read_text())
        parts = []
        if "steps" in data:  # the GPU check: its benchmark steps' figures
            steps = data["steps"]
            parts = [(f"{shown(path)}:{name}", (steps.get(name) or {}).get("figures"))
                     for name in ("bench_embed", "bench_rerank_text")]
        else:
            parts = [(shown(path), data)]
        for source, part in parts:
            if not part:
                rates.notes.append(f"{source}: no figures (step skipped or failed)")
            elif "widths" in part and "mfu" in part:
                rates.stage1 = _embed_rate(part, source)
            elif part.get("results"):
                points, skipped = _stage2_points(part)
                if skipped:
                    rates.notes.append(f"{source}: no token counts for {', '.join(skipped)} (an older schema); skipped")
                if points:
                    rates.stage2.update(points)
                    gflops = part.get("matmul_gflops")
                    rates.stage2_peak_flops = gflops * 1e9 if gflops else None
                    rates.stage2_device = part.get("device", "cpu")
                    rates.stage2_model = (part.get("model") or {}).get("name")
                    rates.stage2_source = source
            else:
                rates.notes.append(f"{source}: not a benchmark JSON this script reads; ignored")
    return rates


def fit_tokens_per_pair(points: Sequence[Stage2Point], attr: str = "tokens_per_pair") -> tuple[float, float]:
    """(suffix tokens per pair, prefix tokens per query) with tokens/pair = suffix + prefix / K, fitted by least
    squares on the measured K; one K (or none varying) gives (tokens/pair, 0)."""
    xs = [(1 / p.k, getattr(p, attr)) for p in points if getattr(p, attr) is not None]
    if not xs:
        raise ValueError(f"no {attr}")
    if len({x for x, _ in xs}) < 2:
        return sum(y for _, y in xs) / len(xs), 0.0
    mx, my = sum(x for x, _ in xs) / len(xs), sum(y for _, y in xs) / len(xs)
    slope = sum((x - mx) * (y - my) for x, y in xs) / sum((x - mx) ** 2 for x, _ in xs)
    slope = max(slope, 0.0)
    return my - slope * mx, slope


def nearest(points: Sequence[Stage2Point], k: int) -> Stage2Point:
    """The measured point at the K nearest ``k`` (in 1/K)."""
    return min(points, key=lambda p: abs(1 / p.k - 1 / k))


# ---------------------------------------------------------------------------------------------------- counts


@dataclass
class Side:
    """One role's unique items in a dataset, as stage 1 runs them: how many, prompt tokens (text, excluding the
    image placeholder), the shared prefix (text batches only), visual tokens per image."""

    items: int
    prompt_tokens: list[int]
    shared: int
    visual: int = 0

    @property
    def image(self) -> bool:
        return self.visual > 0


@dataclass
class DatasetCounts:
    """A dataset's items and pairs, and where each count comes from."""

    name: str
    meta_task: str
    queries: Side
    targets: Side
    candidates_per_row: list[int]
    query_kind: str
    target_kind: str
    source: str
    targets_upper: int | None = None  # MMEB: unique targets if no row shared a candidate

    def pairs(self, k: int) -> int:
        return sum(min(k, c) for c in self.candidates_per_row)


class PromptCounter:
    """Tokens of stage 1's prompts: the FreeRet prior on Qwen2-VL's chat template, with the stand-in tokenizer."""

    def __init__(self, prior: str = "freeret") -> None:
        from transformers import Qwen2VLImageProcessorPil

        from freeret.backbone.backbone import Prompter
        from freeret.backbone.families import get_family
        from freeret.backbone.processors import Qwen2VLImageOnlyProcessor
        from freeret.backbone.spec import ModelSpec
        from freeret.bench import conf
        from freeret.toy.models import QWEN2_VL_CHAT_TEMPLATE, QWEN_VL_TOKENS, toy_tokenizer

        self.tokenizer = toy_tokenizer(QWEN2_VL_CHAT_TEMPLATE, QWEN_VL_TOKENS)
        processor = Qwen2VLImageOnlyProcessor(Qwen2VLImageProcessorPil(), self.tokenizer,
                                              chat_template=QWEN2_VL_CHAT_TEMPLATE)
        self.prompter = Prompter(ModelSpec(name="cost", family="qwen2_vl", source="hub"), get_family("qwen2_vl"),
                                 processor)
        self.prior_cfg = conf("prior", prior)

    def ids(self, dataset_cfg: Mapping[str, Any], role: str, texts: Sequence[str], image: bool) -> list[list[int]]:
        """Token ids of each item's full prompt (an image is its one placeholder token here)."""
        from freeret.embed.priors import Prior
        from freeret.prompts import DatasetPrompt

        prior = Prior.from_dict(self.prior_cfg).for_dataset(DatasetPrompt.from_config(dict(dataset_cfg)))
        prompts = [self.prompter.render(prior.render(role, t, image), 1 if image else 0) for t in texts]
        return self.tokenizer(prompts, add_special_tokens=False)["input_ids"]

    def shared(self, ids: Sequence[Sequence[int]], image: bool) -> int:
        """The common token prefix the prefix cache runs once per batch (0 for image items: the plain path)."""
        if image or len(ids) < 2:
            return 0
        first, n = ids[0], min(len(x) for x in ids)
        for j in range(n):
            if any(x[j] != first[j] for x in ids):
                return j
        return n


def _kind(texts: Sequence[str], image: bool) -> str:
    from freeret.rerank.scorers.base import BOTH, IMAGE_ONLY, TEXT

    return (BOTH if any(t.strip() for t in texts) else IMAGE_ONLY) if image else TEXT


def count_from_data(cfg: Mapping[str, Any], rset: Any, counter: PromptCounter, model: str) -> DatasetCounts:
    """Counts of a loaded set: its rows, candidate lists and unique items, its prompts tokenized."""
    from PIL import Image

    sides = {}
    kinds = {}
    for role in ("query", "target"):
        items = [it for it in rset.items.values() if it.role == role]
        text_items = [it for it in items if not it.image]
        image_items = [it for it in items if it.image]
        ids = counter.ids(cfg, role, [it.text for it in text_items], False) if text_items else []
        img_ids = counter.ids(cfg, role, [it.text for it in image_items], True) if image_items else []
        visual = 0
        if image_items:
            sizes = [Image.open(it.image).size for it in image_items]  # header only
            visual = round(sum(visual_tokens(h, w, model) for w, h in sizes) / len(sizes))
        lengths = [len(x) for x in ids] + [len(x) - 1 for x in img_ids]  # the placeholder becomes the visual tokens
        sides[role] = Side(len(items), lengths, counter.shared(ids, False), visual if image_items else 0)
        kinds[role] = _kind([it.text for it in items], bool(image_items))
        if text_items and image_items:  # mixed roles: price every item with the image's tokens (an upper bound)
            sides[role].shared = 0
    return DatasetCounts(str(cfg.get("name")), str(cfg.get("meta_task", "")), sides["query"], sides["target"],
                         [len(r.candidates) for r in rset.rows], kinds["query"], kinds["target"],
                         f"counted from {cfg.get('path') or cfg.get('root')}")


def count_mmeb_assumed(cfg: Mapping[str, Any], inputs: Mapping[str, Any], counter: PromptCounter,
                       model: str) -> DatasetCounts:
    """An MMEB dataset without its files: counts and lengths from the inputs file, its prompts tokenized from the
    dataset config (the MMEB instruction as the item's leading text) plus the assumed content tokens."""
    mm = inputs["mmeb"]
    name, task = str(cfg["name"]), str(cfg["meta_task"])
    queries = int(value(mm["queries_per_dataset"]))
    labels = value(mm["class_labels"])
    per_row = int(labels[name]) if task == "classification" else int(value(mm["candidates_per_query"]))
    size = value(mm["document_image_size"]) if name in value(mm["document_datasets"]) else value(mm["image_size"])
    vis = visual_tokens(int(size[0]), int(size[1]), model)
    sides, kinds = {}, {}
    for role, n, modality, instruction, content in (
            ("query", queries, cfg["query_modality"], cfg.get("query_instruction") or "", value(mm["query_text_tokens"])),
            ("target", per_row, cfg["target_modality"], cfg.get("target_instruction") or "",
             value(mm["target_text_tokens"])[task])):
        image = "image" in modality
        has_text = "text" in modality
        extra = int(content) if has_text else 0
        two = counter.ids(cfg, role, [f"{instruction} alpha".strip(), f"{instruction} zulu".strip()], image)
        base = counter.ids(cfg, role, [instruction], image)[0]
        length = len(base) + extra - (1 if image else 0)
        sides[role] = Side(n, [length] * n, counter.shared(two, image), vis if image else 0)
        kinds[role] = _kind([instruction + ("x" if has_text else "")], image)
    return DatasetCounts(name, task, sides["query"], sides["target"], [per_row] * queries, kinds["query"],
                         kinds["target"], "assumed (cost_inputs.yaml mmeb; MMEB-eval files not in this repo)",
                         targets_upper=queries * per_row)


def suite_datasets(suite: str) -> dict[str, dict[str, Any]]:
    """The dataset configs of ``conf/suite/<suite>.yaml`` as Hydra composes them."""
    from runs import compose  # experiments/ is the script's own folder: first on the import path

    return dict(compose([f"suite={suite}"])["benchmark"]["datasets"])


def count_suite(suite: str, inputs: Mapping[str, Any], model: str,
                counter: PromptCounter | None = None) -> list[DatasetCounts]:
    """Every dataset of a suite: counted from its files where they are here, else (MMEB) from the assumptions."""
    from freeret.data.datasets import load_dataset
    from freeret.errors import DataError

    counter = counter or PromptCounter()
    out = []
    for cfg in suite_datasets(suite).values():
        if cfg.get("kind") == "mmeb_subset":
            try:
                rset = load_dataset({**cfg, "source": "local"})
            except DataError:
                out.append(count_mmeb_assumed(cfg, inputs, counter, model))
                continue
        else:
            rset = load_dataset(cfg)
        out.append(count_from_data(cfg, rset, counter, model))
    return out


# ---------------------------------------------------------------------------------------------------- projection


def stage1_cost(ds: DatasetCounts, w: Mapping[str, int], vision: Mapping[str, int] | None, batch: int,
                upper: bool = False) -> dict[str, float]:
    """Stage 1 of one dataset: items, tokens run and FLOPs (forward stopped at h^Attn_L; text batches run their
    shared prefix once per batch of ``batch``; image items run every token, plus the vision tower once each).
    ``upper``: MMEB's targets as if no two rows shared a candidate."""
    items = tokens = flops = 0.0
    for role, side in (("query", ds.queries), ("target", ds.targets)):
        n = ds.targets_upper if role == "target" and upper and ds.targets_upper else side.items
        if not n or not side.prompt_tokens:
            continue
        lengths: dict[int, int] = {}
        for x in side.prompt_tokens:  # each item's tokens after the shared prefix (its image's tokens included)
            lengths[x + side.visual - side.shared] = lengths.get(x + side.visual - side.shared, 0) + 1
        m = len(side.prompt_tokens)
        mean_tokens = sum(s * c for s, c in lengths.items()) / m
        mean_flops = sum(flops_per_sequence(w, s, True, False, side.shared) * c for s, c in lengths.items()) / m
        batches = math.ceil(n / batch)
        items += n
        tokens += n * mean_tokens + batches * side.shared
        flops += n * (mean_flops + vision_flops(side.visual, vision, w["d"]))
        flops += batches * flops_per_sequence(w, side.shared, True, False)
    return {"items": items, "tokens": tokens, "flops": flops}


def applies(scorer: str, ds: DatasetCounts) -> bool:
    """Whether ``scorer`` takes this dataset's query and candidate kinds (its spec class says)."""
    from freeret.rerank.scorers import SCORERS

    spec = SCORERS[scorer]
    return ds.query_kind in spec.query_kinds and ds.target_kind in spec.candidate_kinds


def stage2_cost(ds: DatasetCounts, k: int, suffix: float, prefix: float, shape: Mapping[str, Any],
                w: Mapping[str, int], vision: Mapping[str, int] | None) -> dict[str, float]:
    """Stage 2 of one dataset at K: pairs, tokens and FLOPs on the run path.

    Per query the prefix (``prefix`` text tokens, plus the query's image when the scorer shares the query) runs
    once; per pair the suffix (``suffix`` text tokens, the query's image when it is not shared, the candidate's
    image ``candidate_passes`` times). The vision tower runs once per query image and once per unique candidate
    image among the pairs (the run's vision cache). ``suffix``/``prefix``: tokens/pair = suffix + prefix / K."""
    by_k: dict[int, int] = {}
    for c in ds.candidates_per_row:
        by_k[min(k, c)] = by_k.get(min(k, c), 0) + 1
    vq, vc = ds.queries.visual, ds.targets.visual
    shared = bool(shape["query_shared"])
    passes = int(shape["candidate_passes"])
    pairs = tokens = flops = 0.0
    for kk, rows in by_k.items():
        p = prefix + (vq if shared else 0)
        s = suffix + (0 if shared else vq) + passes * vc
        pairs += rows * kk
        tokens += rows * (p + kk * s)
        flops += rows * (flops_per_sequence(w, round(p), False, False) + kk * flops_per_sequence(w, round(s), False,
                                                                                                   False, round(p)))
    flops += ds.queries.items * vision_flops(vq, vision, w["d"])
    flops += min(pairs, ds.targets.items) * vision_flops(vc, vision, w["d"])
    return {"pairs": pairs, "tokens": tokens, "flops": flops}


def stage2_shape(scorer: str, rates: Rates, inputs: Mapping[str, Any]) -> tuple[float, float, list[Stage2Point], str]:
    """(suffix, prefix, measured points, where from) of a scorer's text tokens per pair."""
    points = rates.stage2.get(scorer, [])
    if points:
        suffix, prefix = fit_tokens_per_pair(points)
        return suffix, prefix, points, f"measured ({rates.stage2_source}, {points[0].path} path)"
    fb = inputs["stage2_fallback"]
    suffix, prefix = float(value(fb["suffix_tokens_per_pair"])), float(value(fb["prefix_tokens_per_query"]))
    return suffix, prefix, [], f"assumed (cost_inputs.yaml stage2_fallback: {suffix:g} per pair + {prefix:g} per query)"


def project(suite: str, model: str, device: str, scorers: Sequence[str], ks: Sequence[int], rates: Rates,
            inputs: Mapping[str, Any], mfu: float | None = None, mfu_range: Sequence[float] | None = None,
            counts: list[DatasetCounts] | None = None) -> dict[str, Any]:
    """The projection as plain data (what the table and the JSON show)."""
    spec = inputs["models"][model]
    text, vision = value(spec["text"]), value(spec.get("vision"))
    w = decoder_widths(text)
    dev = inputs["devices"][device]
    counts = counts if counts is not None else count_suite(suite, inputs, model)
    mfu_default = float(value(inputs["mfu"]["default"]))
    span = list(mfu_range if mfu_range is not None else value(inputs["mfu"]["range"]))
    notes = list(rates.notes)

    def peak_for(measured_peak: float | None, what: str) -> float:
        if device != "cpu":
            return float(value(dev["peak_tflops"])) * 1e12
        if not measured_peak:
            raise SystemExit(f"--device cpu needs the measured matmul rate of the {what} rates file")
        return measured_peak

    # stage 1
    batch = int(value(inputs["stage1"]["batch_size"]))
    per_ds = []
    for ds in counts:
        got = stage1_cost(ds, w, vision, batch)
        upper = stage1_cost(ds, w, vision, batch, upper=True) if ds.targets_upper else got
        per_ds.append({"dataset": ds.name, "meta_task": ds.meta_task, "source": ds.source, **got,
                       "items_upper": upper["items"], "tokens_upper": upper["tokens"], "flops_upper": upper["flops"],
                       "query_visual_tokens": ds.queries.visual, "target_visual_tokens": ds.targets.visual})
    s1_mfu, s1_mfu_src = (mfu, "--mfu") if mfu else (
        (rates.stage1.mfu, f"measured ({rates.stage1.source}, freeret path on {rates.stage1.device})")
        if rates.stage1.mfu else (mfu_default, "assumed (cost_inputs.yaml mfu.default)"))
    peak1 = peak_for(rates.stage1.peak_flops, "embedding")
    s1 = {k: sum(d[k] for d in per_ds) for k in ("items", "tokens", "flops", "items_upper", "tokens_upper",
                                                   "flops_upper")}
    s1.update(mfu=s1_mfu, mfu_source=s1_mfu_src, hours=hours(s1["flops"], peak1, s1_mfu),
              hours_upper=hours(s1["flops_upper"], peak1, s1_mfu),
              hours_range={str(m): hours(s1["flops"], peak1, m) for m in span}, datasets=per_ds,
              rate_tokens_per_s=s1["tokens"] / (hours(s1["flops"], peak1, s1_mfu) * 3600) if s1["flops"] else None,
              measured_rate=rates.stage1.__dict__)
    if rates.stage1.tokens_per_s and rates.stage1.flops_per_token and rates.stage1.peak_flops and s1["tokens"]:
        s1["rate_scaled_from_measured"] = scale_rate(rates.stage1.tokens_per_s, rates.stage1.flops_per_token,
                                                     s1["flops"] / s1["tokens"], rates.stage1.peak_flops, peak1,
                                                     rates.stage1.mfu or s1_mfu, s1_mfu)

    # stage 2
    shapes = value(inputs["scorers"])
    peak2 = peak_for(rates.stage2_peak_flops or rates.stage1.peak_flops, "scorers")
    s2 = []
    for scorer in scorers:
        suffix, prefix, points, tpp_src = stage2_shape(scorer, rates, inputs)
        for k in ks:
            ran = [ds for ds in counts if applies(scorer, ds)]
            skipped = [ds.name for ds in counts if not applies(scorer, ds)]
            per = [{"dataset": ds.name, **stage2_cost(ds, k, suffix, prefix, shapes[scorer], w, vision)} for ds in ran]
            tot = {key: sum(d[key] for d in per) for key in ("pairs", "tokens", "flops")}
            near = nearest(points, k) if points else None
            if mfu:
                m, m_src = mfu, "--mfu"
            elif near and near.mfu:
                m, m_src = near.mfu, f"measured ({near.path} path, K={near.k}, {rates.stage2_device})"
            else:
                m, m_src = mfu_default, "assumed (cost_inputs.yaml mfu.default)"
            h = hours(tot["flops"], peak2, m)
            s2.append({"scorer": scorer, "k": k, "datasets": len(ran), "not_applicable": skipped, **tot,
                       "tokens_per_pair": tot["tokens"] / tot["pairs"] if tot["pairs"] else None,
                       "text_tokens_per_pair": suffix + prefix / k, "text_tokens_source": tpp_src,
                       "bench_tokens_per_pair": near.tokens_per_pair if near else None,
                       "bench_minimum_tokens_per_pair": near.minimum_tokens_per_pair if near else None,
                       "bench_k": near.k if near else None, "mfu": m, "mfu_source": m_src, "hours": h,
                       "hours_range": {str(x): hours(tot["flops"], peak2, x) for x in span},
                       "rate_tokens_per_s": tot["tokens"] / (h * 3600) if h else None, "per_dataset": per})
    return {"suite": suite, "model": model, "model_name": spec.get("name", model), "device": device,
            "device_name": dev.get("name", device), "peak_flops": {"stage1": peak1, "stage2": peak2},
            "flops_per_token_decoder": flops_per_sequence(w, 1, False, False), "widths": w, "vision": vision,
            "stage1": s1, "stage2": s2, "mfu_range": span, "notes": notes, "inputs": provenance(inputs)}


# ---------------------------------------------------------------------------------------------------- output


def _n(x: float) -> str:
    return f"{x / 1e9:.2f} B" if x >= 1e9 else f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x:,.0f}"


def _h(x: float) -> str:
    """Hours, in the unit that reads best."""
    return f"{x:.2f} h" if x >= 1 else f"{x * 60:.1f} min" if x * 60 >= 1 else f"{x * 3600:.1f} s"


def table(res: Mapping[str, Any]) -> str:
    """The projection as Markdown."""
    s1, span = res["stage1"], res["mfu_range"]
    lo, hi = str(span[0]), str(span[-1])
    out = [f"Projected wall time: suite {res['suite']} ({len(s1['datasets'])} datasets), {res['model_name']} on "
           f"{res['device_name']} ({res['peak_flops']['stage1'] / 1e12:,.1f} TFLOP/s peak); decoder "
           f"{res['flops_per_token_decoder'] / 1e9:.2f} GFLOP/token", "",
           f"| stage | scorer | K | datasets | items / pairs | tokens/pair (suite) | bench tokens/pair run / min (text, K) "
           f"| tokens | PFLOP | MFU | wall time | at MFU {lo} / {hi} |", "|" + "---|" * 12]
    upper = f" (no shared candidates: {_n(s1['items_upper'])} items, {_h(s1['hours_upper'])})" \
        if s1["items_upper"] != s1["items"] else ""
    out.append(f"| 1 embed | - | - | {len(s1['datasets'])} | {_n(s1['items'])} items{upper} | - | - | {_n(s1['tokens'])} | "
               f"{s1['flops'] / 1e15:,.1f} | {s1['mfu']:.2f} | **{_h(s1['hours'])}** | {_h(s1['hours_range'][lo])} / "
               f"{_h(s1['hours_range'][hi])} |")
    for r in res["stage2"]:
        if not r["datasets"]:
            out.append(f"| 2 rerank | {r['scorer']} | {r['k']} | 0 | not applicable: takes no dataset of this suite "
                       f"| - | - | - | - | - | - | - |")
            continue
        bench = (f"{r['bench_tokens_per_pair']:.1f} / "
                 + (f"{r['bench_minimum_tokens_per_pair']:.1f}" if r["bench_minimum_tokens_per_pair"] else "-")
                 + f" (K={r['bench_k']})") if r["bench_tokens_per_pair"] else f"assumed {r['text_tokens_per_pair']:.1f}"
        out.append(f"| 2 rerank | {r['scorer']} | {r['k']} | {r['datasets']} | {_n(r['pairs'])} pairs | "
                   f"{r['tokens_per_pair']:.0f} | {bench} | {_n(r['tokens'])} | {r['flops'] / 1e15:,.1f} | {r['mfu']:.2f} | "
                   f"**{_h(r['hours'])}** | {_h(r['hours_range'][lo])} / {_h(r['hours_range'][hi])} |")
    out.append("")
    out.append(f"Stage 1 MFU: {s1['mfu_source']}.")
    groups: dict[tuple[str, str], list[str]] = {}
    for r in res["stage2"]:
        names = groups.setdefault((r["mfu_source"], r["text_tokens_source"]), [])
        if r["scorer"] not in names:
            names.append(r["scorer"])
    for (m_src, t_src), names in groups.items():
        out.append(f"Stage 2 {', '.join(names)}: MFU {m_src}; text tokens per pair {t_src}.")
    total = len(s1["datasets"])
    for r in {r["scorer"]: r for r in res["stage2"] if r["not_applicable"]}.values():
        ran = [d["dataset"] for d in r["per_dataset"]]
        where = (f"on {len(ran)} of {total} datasets ({', '.join(ran)}): the others have" if ran
                 else f"on none of the {total} datasets: each has")
        out.append(f"{r['scorer']} runs {where} a query or candidate kind it does not take (docs/rerankers.md).")
    if s1.get("rate_tokens_per_s"):
        line = f"Stage 1 rate on {res['device_name']}: {s1['rate_tokens_per_s']:,.0f} tokens/s"
        m = s1["measured_rate"]
        if m.get("tokens_per_s"):
            line += (f" (measured: {m['tokens_per_s']:,.1f} tokens/s of {m['model']} on {m['device']} at MFU "
                     f"{m['mfu']:.2f}; scaled by FLOPs/token and peak x MFU: "
                     f"{s1.get('rate_scaled_from_measured', float('nan')):,.0f} tokens/s)")
        out.append(line + ".")
    for note in res["notes"]:
        out.append(f"Note: {note}.")
    return "\n".join(out)


def inputs_table(res: Mapping[str, Any]) -> str:
    """Which inputs are measured and which assumed."""
    rows = ["| input | value | status | source |", "|---|---|---|---|"]
    for e in res["inputs"]:
        v = json.dumps(e["value"]) if not isinstance(e["value"], str) else e["value"]
        rows.append(f"| {e['input']} | {v} | {e['status']} | {e['source']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    inputs = load_inputs()
    ap = parser(__doc__)
    ap.add_argument("--suite", default="mmeb", help="a conf/suite name (mmeb, wordnet_meta, stage1_test, ...)")
    ap.add_argument("--model", default="qwen2vl_7b", choices=sorted(inputs["models"]))
    ap.add_argument("--device", default="h100", choices=sorted(inputs["devices"]))
    ap.add_argument("--scorers", nargs="+", default=list(DEFAULT_SCORERS))
    ap.add_argument("--k", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--rates", type=Path, nargs="+", default=None,
                    help="rates files: an embedding bench JSON, a scorers bench JSON, a gpu_check.json (default: "
                         f"{DEFAULT_EMBED_RATES.relative_to(repo_root())} and {DEFAULT_RERANK_RATES.relative_to(repo_root())})")
    ap.add_argument("--mfu", type=float, default=None, help="one MFU for both stages instead of the measured ones")
    ap.add_argument("--mfu-range", type=float, nargs=2, default=None, help="two more MFUs to give hours at")
    ap.add_argument("--inputs-table", action="store_true", help="also print which inputs are measured or assumed")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.scorers) - set(value(inputs["scorers"])))
    if unknown:
        ap.error(f"unknown scorer(s) {', '.join(unknown)}; known: {', '.join(value(inputs['scorers']))}")
    rates = load_rates(args.rates or [DEFAULT_EMBED_RATES, DEFAULT_RERANK_RATES])
    res = project(args.suite, args.model, args.device, args.scorers, args.k, rates, inputs, args.mfu, args.mfu_range)
    res["command"] = "python experiments/project_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(table(res))
    if args.inputs_table:
        print()
        print(inputs_table(res))
    out = args.out or BENCH_OUT / f"cost_{args.suite}_{args.model}_{args.device}.json"
    write(out, res)
    scorers = list(dict.fromkeys(r["scorer"] for r in res["stage2"]))
    got = {(r["scorer"], r["k"]): r["hours"] for r in res["stage2"]}
    bar_chart(out, ["stage 1\n(any K)"] + [s.replace("_", "\n") for s in scorers],
              {f"K={k}": [res["stage1"]["hours"]] + [got[(s, k)] for s in scorers] for k in args.k}, "hours",
              f"{res['model_name'].split(' (')[0]} on {res['device_name']}, suite {args.suite}")


if __name__ == "__main__":
    main()
