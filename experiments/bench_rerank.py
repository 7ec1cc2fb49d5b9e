"""Rerank throughput: one forward per pair (naive) vs the shared-prefix KV-cache path (fast), same run.

    python experiments/bench_rerank.py --queries 2 --k 50
    python experiments/bench_rerank.py --k 10 50 100 \
        --scorers choice choice_debiased candidate_likelihood query_likelihood bidirectional listwise
    python experiments/bench_rerank.py --case image --model qwen2vl_2b_dims --layers 2 --queries 1 --k 10 50
Prints pairs/s for both, the speed-up, and the largest score difference; writes JSON and a bar plot, with the
decoder forwards and the token positions each path ran (``work``: counted by a hook on the decoder).
``naive`` is FreeRet's own reference (the decoder only, LM head on the last token's option rows); ``--hf`` adds
the textbook loop, ``model(**inputs).logits[:, -1]`` (full-vocabulary logits at every position), as a third path.
Cases: ``text`` = WordNet definitions against their candidate words; ``image`` = a bundled photo (scikit-image
astronaut, resized by the Qwen2-VL processor to ``--max-pixels``, 256 visual tokens at 448x448) as the query
against text candidates (the smoke captions, then WordNet definitions), the MMEB image->text setting.
Both paths get the same vision-feature cache, so the image tower runs once per image in either.
``--scorers`` (text case): every named stage-2 scorer (conf/scorer), three paths side by side at equal threads:
``naive`` (``scorer.naive`` per query: one full forward per prompt, per pair, per window and per candidate prior),
``run`` (the run's path over all the queries, timed as a whole: ``score_block`` on ``--queries-per-step`` rows at a
time where the scorer has it, else ``score`` per query; the fastest of ``--repeats`` rounds, a fresh scorer each, so
no cache carries across rounds or K; its BuildContext gets ``max_tokens_per_batch=--max-tokens`` where it takes it)
and ``today`` (the per-query ``score`` of the checkout ``--today-code``, by bench_rerank_commits.py in a subprocess,
rounds alike; skipped without it). Per path: pairs/s, decoder tokens per pair (padding included), and MFU (model
FLOPs of the tokens run, LM head included, per second over an fp32 torch.mm rate measured in the same run); per
scorer and K the minimum tokens per pair given perfect reuse, from the scorer's own prompts tokenised
(``minimum_tokens``), and the largest |run - naive| score difference:

    git -C /work/main archive ccb5abb | tar -x -C /tmp/freeret_ccb5abb
    python experiments/bench_rerank.py --scorers candidate_likelihood query_likelihood bidirectional choice \
        --k 50 --queries 16 --threads 2 --today-code /tmp/freeret_ccb5abb

``image_candidates`` = caption queries against K image candidates (full-size JPEGs: the bundled photos and
mirrored/rotated/cropped variants; every query reranks the same K), the MMEB text->image setting:

    python experiments/bench_rerank.py --case image_candidates --model tiny_qwen2vl --queries 4 --k 8 32 --workers 2
    python experiments/bench_rerank.py --case image_candidates --model qwen2vl_2b_dims --layers 28 --k 50 --device cuda --workers 8

naive = one forward per pair with its own decode, processor call and vision tower (no vision cache); fast = the
stage as a run does it: each unique image decoded and processed once (``GroupCollator`` on the groups planned
by ``plan_images``; in ``--workers`` DataLoader workers too) and through the tower once. It also times the image
preprocessing alone: per pair (as every pair did before issue 12) and once per image (records).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from freeret.bench import (
    BENCH_OUT,
    bar_chart,
    best_of,
    conf,
    dataset_prompt,
    flops_per_sequence,
    matmul_gflops,
    parser,
    set_threads,
    sync,
    widths,
    write,
)
from freeret.bench_models import load_weights
from freeret.data.datasets import load_dataset
from freeret.data.retrieval_set import Item
from freeret.paths import repo_root
from freeret.rerank.framing import Framing
from freeret.rerank.packing import default_max_tokens
from freeret.rerank.scorers.choice import Choice


def image_rows(k_max: int, queries: int, candidates: str = "definitions") -> list[tuple[Item, list[Item]]]:
    """Image queries (full-size bundled photos) against the smoke captions then WordNet definitions or words."""
    from PIL import Image

    from freeret.toy.smoke import CAPTIONS, smoke_image

    folder = BENCH_OUT / "images"
    folder.mkdir(parents=True, exist_ok=True)
    wn = load_dataset({"name": "wordnet_rd", "path": str(repo_root() / "data/wordnet_rd/wordnet_rd.jsonl.gz"), "limit": k_max})
    if candidates == "words":  # short, like class names in MMEB classification tasks
        words = dict.fromkeys(wn.items[c].text for r in wn.rows for c in r.candidates)
        texts = list(CAPTIONS.values()) + list(words)
    else:
        texts = list(CAPTIONS.values()) + [wn.items[r.query].text for r in wn.rows]
    cands = [Item.make("target", t, None) for t in texts[:k_max]]
    rows = []
    for name in list(CAPTIONS)[:queries]:
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(smoke_image(name)).convert("RGB").save(path)
        rows.append((Item.make("query", "", str(path)), cands))
    return rows


def candidate_images(k: int) -> list[Item]:
    """``k`` distinct full-size JPEG photos: the bundled ones, then mirrored, flipped, rotated and cropped copies."""
    from PIL import Image, ImageOps

    from freeret.toy.smoke import CAPTIONS, smoke_image

    folder = BENCH_OUT / "images" / "candidates"
    folder.mkdir(parents=True, exist_ok=True)
    names = list(CAPTIONS)
    changes = [lambda im: im, ImageOps.mirror, ImageOps.flip, lambda im: im.rotate(90, expand=True)]
    items = []
    for i in range(k):
        name, variant = names[i % len(names)], i // len(names)
        path = folder / f"{name}_{variant}.jpg"
        if not path.exists():
            image = changes[variant % len(changes)](Image.fromarray(smoke_image(name)).convert("RGB"))
            cut = 8 * (variant // len(changes))
            image.crop((cut, cut, image.width - cut, image.height - cut)).save(path, quality=90)
        items.append(Item.make("target", "", str(path)))
    return items


def image_candidates_case(backbone, framing: Framing, args) -> list[dict]:
    """Caption queries against the same K image candidates: naive vs fast (main process, then workers)."""
    from torch.utils.data import DataLoader

    from freeret.backbone.image_records import preprocess_visual
    from freeret.data.visual import load_visual
    from freeret.rerank.stage import GroupCollator, plan_images
    from freeret.toy.smoke import CAPTIONS

    queries = [Item.make("query", c, None) for c in list(CAPTIONS.values())[: args.queries]]
    warm = Choice(backbone, framing, args.batch_size)
    warm.score(queries[0], candidate_images(1))
    counter = DecoderWork(warm.shared.base)
    rows = []
    for k in args.k:
        cands = candidate_images(k)
        groups = [{"row": str(i), "positions": list(range(k)), "query": q, "candidates": cands}
                  for i, q in enumerate(queries)]
        pairs = k * len(queries)
        reference = Choice(backbone, framing, args.batch_size, vision_cache_mb=0)
        counter.take_phases()
        timing, got = best_of({"naive": lambda r=reference, c=cands: torch.cat([r.naive_probs(q, c, batch_size=1)
                                                                                for q in queries])}, 1)
        naive = got["naive"]
        rec = {"k": k, "queries": len(queries), "pairs": pairs, "naive_pairs_per_s": pairs / timing["naive"].seconds,
               "tokens_per_s": {"naive": counter.take_phases()}}
        for workers in [0, *args.workers]:
            scorer = Choice(backbone, framing, args.batch_size)
            loader = DataLoader(plan_images(groups, scorer.image_uses), batch_size=None,  # type: ignore[arg-type]
                                collate_fn=GroupCollator(backbone.prompter), num_workers=workers)
            name = f"fast_workers{workers}" if workers else "fast"
            timing, got = best_of({name: lambda s=scorer, ld=loader: torch.cat(
                [s.option_probs(g["query"], g["candidates"], g.get("records")) for g in ld])}, 1)
            fast = got[name]
            rec[f"{name}_pairs_per_s"] = pairs / timing[name].seconds
            rec[f"{name}_max_abs_score_diff"] = float((fast - naive).abs().max())
            rec[f"{name}_vision_cache"] = dict(scorer.vision.stats.__dict__, mib=scorer.vision.nbytes / 2**20)
            rec["tokens_per_s"][name] = counter.take_phases()
        rec.update(phase_rates(rec["tokens_per_s"]["fast"], "fast"))

        def per_pair(r: Choice = reference, cs: list[Item] = cands) -> None:
            for q in queries:  # what every pair did before: decode its image, run the processor on its prompt
                for c in cs:
                    backbone.inputs([r.prompt(q, c)], [load_visual(c.image)])

        def once(cs: list[Item] = cands) -> None:
            for c in cs:
                preprocess_visual(backbone.prompter, c.image)

        timing, _ = best_of({"per_pair": per_pair, "once": once}, 1)
        rec["preprocess_per_pair_images_per_s"] = pairs / timing["per_pair"].seconds
        rec["preprocess_once_images_per_s"] = k / timing["once"].seconds
        rec["preprocess_main_process_seconds"] = {"per_pair": pairs / rec["preprocess_per_pair_images_per_s"],
                                                  "once_per_image": k / rec["preprocess_once_images_per_s"],
                                                  "workers": 0.0}
        rows.append(rec)
        print(f"K={k} x {len(queries)} queries: naive {rec['naive_pairs_per_s']:.1f} pairs/s | "
              + " | ".join(f"{n.removesuffix('_pairs_per_s').replace('_workers', ', workers ')} {v:.1f}"
                           for n, v in rec.items() if n.startswith("fast") and n.endswith("_pairs_per_s"))
              + f" pairs/s | max |score diff| {rec['fast_max_abs_score_diff']:.2e} | preprocessing "
              f"{rec['preprocess_per_pair_images_per_s']:.1f} images/s per pair, {rec['preprocess_once_images_per_s']:.1f} "
              f"images/s once; main-process seconds {rec['preprocess_main_process_seconds']['per_pair']:.2f} -> "
              f"{rec['preprocess_main_process_seconds']['once_per_image']:.2f} (0 with workers)")
    return rows


class DecoderWork:
    """Counts the decoder forwards and the token positions they run (padding included), by hooks, and times them
    per phase: ``prefix`` = a forward that fills an empty KV cache (a query's shared prefix), ``suffix`` = one
    that reads a cached prefix (candidate suffix batches), ``full`` = one without a cache (naive, image pairs).
    Phase seconds are decoder forward time only, the GPU synchronised before and after each forward.

    With ``widths`` (:func:`freeret.bench.widths`) it also adds up the model FLOPs of every forward
    (:func:`freeret.bench.flops_per_sequence`, without the LM head; a forward on a cache of n tokens attends at its
    real positions n+1..), and :meth:`watch_head` those of the LM head (2 * d * the logits it computes)."""

    PHASES_NOTE = ("decoder token positions (padding included) per second of decoder forward time, by phase: prefix = "
                   "forwards that fill an empty KV cache (each query's shared prefix), suffix = forwards on a cached "
                   "prefix (candidate suffix batches), full = forwards without a cache (naive pairs, image pairs)")

    def __init__(self, decoder: torch.nn.Module, widths: dict[str, int] | None = None) -> None:
        self.forwards = self.tokens = 0
        self.decoder_flops = self.head_flops = 0.0
        self.widths = widths
        self.phases: dict[str, dict[str, float]] = {}
        self._open: tuple[str, int, float] | None = None
        self._device = next(decoder.parameters()).device
        self._handles = [decoder.register_forward_pre_hook(self._count, with_kwargs=True),
                         decoder.register_forward_hook(self._done)]
        self._undo: list = []

    def close(self) -> None:
        """Remove the hooks and the LM-head wrapper (a model that outlives the count)."""
        for handle in self._handles:
            handle.remove()
        for undo in self._undo:
            undo()
        self._handles, self._undo = [], []

    def watch_head(self, runner) -> None:
        """Count the LM-head logits that ``runner.head_logits`` (the model's SharedPrefix: every scorer's head goes
        through it) computes: positions x vocabulary rows (all of them, or the rows asked for)."""
        original, own = runner.head_logits, vars(runner).get("head_logits")  # own: another count's wrapper

        def counted(hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            vocab, d = runner.head.weight.shape
            self.head_flops += 2 * d * (hidden.numel() // hidden.shape[-1]) * (vocab if rows is None else len(rows))
            return original(hidden, rows)

        runner.head_logits = counted
        self._undo.append(lambda: setattr(runner, "head_logits", own) if own else vars(runner).pop("head_logits", None))

    def _sync(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        shape = ids.shape if ids is not None else kwargs["inputs_embeds"].shape[:2]
        tokens = int(shape[0] * shape[1])
        self.forwards += 1
        self.tokens += tokens
        cache = kwargs.get("past_key_values")
        cached = 0 if cache is None else int(cache.get_seq_length())
        phase = "full" if cache is None else "suffix" if cached > 0 else "prefix"
        if self.widths:
            self.decoder_flops += shape[0] * flops_per_sequence(self.widths, int(shape[1]), early_exit=False, head=False,
                                                                start=cached)
        self._sync()
        self._open = (phase, tokens, time.perf_counter())

    def _done(self, module, args, output) -> None:
        if self._open is None:
            return
        self._sync()
        phase, tokens, start = self._open
        self._open = None
        got = self.phases.setdefault(phase, {"forwards": 0, "tokens": 0, "seconds": 0.0})
        got["forwards"] += 1
        got["tokens"] += tokens
        got["seconds"] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """The counts since the last call (forwards, tokens, decoder_flops, head_flops), then zero."""
        out = {"forwards": self.forwards, "tokens": self.tokens, "decoder_flops": self.decoder_flops,
               "head_flops": self.head_flops}
        self.forwards = self.tokens = 0
        self.decoder_flops = self.head_flops = 0.0
        return out

    def take_phases(self) -> dict[str, dict[str, float]]:
        """Forwards, tokens, seconds and tokens/s per phase since the last call, then zero."""
        out, self.phases = self.phases, {}
        for got in out.values():
            got["tokens_per_s"] = got["tokens"] / got["seconds"] if got["seconds"] else None
        return out


def add_phases(total: dict[str, dict[str, float]], more: dict[str, dict[str, float]]) -> None:
    """Add one query's per-phase work into ``total`` and recompute its tokens/s."""
    for phase, got in more.items():
        acc = total.setdefault(phase, {"forwards": 0, "tokens": 0, "seconds": 0.0})
        for key in ("forwards", "tokens", "seconds"):
            acc[key] += got[key]
        acc["tokens_per_s"] = acc["tokens"] / acc["seconds"] if acc["seconds"] else None


def phase_rates(phases: dict[str, dict[str, float]], path: str) -> dict[str, float | None]:
    """``<path>_<phase>_tokens_per_s`` for prefix, suffix and full (None where the phase did not run)."""
    return {f"{path}_{p}_tokens_per_s": phases.get(p, {}).get("tokens_per_s") for p in ("prefix", "suffix", "full")}


def build_context(cls: type, **kwargs):  # noqa: ANN201 - a BuildContext of whichever checkout runs
    """``cls(**kwargs)`` with only the kwargs that its dataclass fields accept (an older BuildContext lacks the newer
    ones, e.g. ``max_tokens_per_batch``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kwargs.items() if k in names})


def scorer_builder(backbone, name: str, framing_name: str, batch_size: int, max_tokens: int | None):  # noqa: ANN201
    """(a function that builds a fresh ``name`` scorer, the BuildContext's settings): the scorer as run.py composes
    ``conf/scorer/<name>.yaml``, for WordNet prompts, with the settings that this checkout's BuildContext takes."""
    from runs import composed

    from freeret.rerank.scorers import scorer_spec
    from freeret.rerank.scorers.base import BuildContext

    prompt = dataset_prompt("wordnet_rd")
    framing = Framing.from_dict(conf("framing", framing_name)).for_dataset(prompt)
    spec = scorer_spec(composed("scorer", name))
    ctx = build_context(BuildContext, backbone=backbone, framing=framing, prompt=prompt, batch_size=batch_size,
                        max_tokens_per_batch=max_tokens)
    settings = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx) if f.name not in ("backbone", "framing", "prompt")}
    return lambda: spec.build(ctx), settings


def run_path(scorer, rows: list[tuple[Item, list[Item]]], queries_per_step: int) -> list:
    """The run's path over ``rows``: ``score_block`` on blocks of ``queries_per_step`` rows where the scorer has it
    (many queries' pairs packed into forwards), else ``score`` once per query."""
    block = getattr(scorer, "score_block", None)
    if block is None:
        return [scorer.score(q, c) for q, c in rows]
    out: list = []
    for start in range(0, len(rows), queries_per_step):
        out.extend(block(rows[start : start + queries_per_step]))
    return out


def timed_work(counter: DecoderWork, call, device: torch.device) -> tuple[object, dict[str, float]]:
    """``call()``'s result and its work: wall seconds (the device synchronised), decoder forwards, tokens and FLOPs."""
    counter.take()
    sync(device)
    start = time.perf_counter()
    got = call()
    sync(device)
    return got, {"seconds": time.perf_counter() - start, **counter.take()}


def fastest_of(rounds: int, build, call, counter: DecoderWork, device: torch.device) -> tuple[object, dict[str, float]]:
    """``call(scorer)`` on a fresh ``build()`` scorer (no cache carried from another round) ``rounds`` times; the last
    result and the work of the fastest round (the counts are the same every round)."""
    best: dict[str, float] | None = None
    for _ in range(rounds):
        scorer = build()
        got, work = timed_work(counter, lambda s=scorer: call(s), device)
        best = work if best is None or work["seconds"] < best["seconds"] else best
    return got, {**best, "rounds": rounds}


def path_figures(work: dict[str, float], pairs: int, ref_gflops: float) -> dict[str, float]:
    """A path's figures from its work: pairs/s, tokens per pair and per second, forwards, seconds, model GFLOP/s
    (decoder + LM head) and MFU against the run's fp32 matmul rate."""
    secs, flops = work["seconds"], work["decoder_flops"] + work["head_flops"]
    return {**({"rounds": work["rounds"]} if "rounds" in work else {}),
            "pairs_per_s": pairs / secs, "tokens_per_pair": work["tokens"] / pairs, "tokens_per_s": work["tokens"] / secs,
            "forwards": work["forwards"], "tokens": work["tokens"], "seconds": secs, "decoder_flops": work["decoder_flops"],
            "head_flops": work["head_flops"], "model_gflops_per_s": flops / secs / 1e9, "mfu": flops / secs / 1e9 / ref_gflops}


def _prompt_tokens(bb, prompt: str) -> int:
    """Tokens of a text prompt as the scorers run it (``bb.inputs``, as ``lm.model_inputs``: special tokens in)."""
    return int(bb.inputs([prompt])["input_ids"].shape[1])


def _text_tokens(bb, text: str) -> int:
    return len(bb.tokenizer(text, add_special_tokens=False)["input_ids"])


def _min_candidate(scorer, rows: list[tuple[Item, list[Item]]]) -> dict[str, int]:
    bb = scorer.bb
    parts = {"query_prompts": sum(_prompt_tokens(bb, scorer.prompt(q)) for q, _ in rows),
             "candidates": sum(len(scorer.text.scored_ids(scorer.prompt(q), c.text)) for q, cs in rows for c in cs)}
    if scorer.with_prior:
        prior = scorer.prior_prompt()
        texts = dict.fromkeys(c.text for _, cs in rows for c in cs)
        parts.update(prior_prompt=_prompt_tokens(bb, prior),
                     prior_candidates=sum(len(scorer.text.scored_ids(prior, t)) for t in texts))
    return parts


def _min_query(scorer, rows: list[tuple[Item, list[Item]]]) -> dict[str, int]:
    bb, split = scorer.bb, scorer.split
    shared = rest = 0
    for cand in {c.text: c for _, cs in rows for c in cs}.values():
        whole = scorer.prompt(cand)
        if split.prefix and split.is_exact(bb.tokenizer, cand.text, whole):
            shared = _prompt_tokens(bb, split.prefix)
            rest += _text_tokens(bb, split.suffix_for(cand.text))
        else:
            rest += _prompt_tokens(bb, whole)
    return {"shared_start": shared, "candidate_prompts": rest,
            "queries": sum(len(scorer.text.scored_ids(scorer.prompt(c), q.text)) for q, cs in rows for c in cs)}


def _min_choice(scorer, rows: list[tuple[Item, list[Item]]]) -> dict[str, int]:
    bb = scorer.bb
    parts = {"query_prefixes": 0, "option_suffixes": 0}
    for query, cands in rows:
        split = scorer.split(query)
        parts["query_prefixes"] += _prompt_tokens(bb, split.prefix)
        parts["option_suffixes"] += sum(_text_tokens(bb, split.suffix_for(c.text)) for c in cands)
    return parts


MINIMUM_NOTE = (
    "minimum_tokens: the decoder token positions scoring the bench's rows needs given perfect KV reuse and no padding, "
    "from the scorer's own prompts tokenised (not from the run): candidate_likelihood = each query's prompt once + "
    "each pair's scored candidate tokens (+ with cpn_lambda != 0: the prior prompt once + each unique candidate's "
    "scored tokens once); query_likelihood = the prompt's shared start (up to the candidate's line) once per run + "
    "each unique candidate's rest of the prompt once + each pair's query tokens (a candidate whose split does not "
    "tokenise like its whole prompt counts its whole prompt); bidirectional = both; choice = each query's prefix "
    "once + each pair's option suffix (choice_debiased: for both option orders); listwise: not computed (null). "
    "Scored tokens count in full, the last one too, as the paths run them.")


def minimum_tokens(scorer, rows: list[tuple[Item, list[Item]]]) -> dict[str, int] | None:
    """The decoder tokens that scoring ``rows`` (text items) with ``scorer`` needs at the least, by part
    (:data:`MINIMUM_NOTE`); None for a scorer it does not know (listwise)."""
    def tagged(tag: str, parts: dict[str, int]) -> dict[str, int]:
        return {f"{tag}_{key}": n for key, n in parts.items()}

    if scorer.name == "candidate_likelihood":
        return _min_candidate(scorer, rows)
    if scorer.name == "query_likelihood":
        return _min_query(scorer, rows)
    if scorer.name == "bidirectional":
        return {**tagged("candidate", _min_candidate(scorer.cl, rows)), **tagged("query", _min_query(scorer.ql, rows))}
    if scorer.name == "choice":
        return _min_choice(scorer, rows)
    if scorer.name == "choice_debiased":
        return {**tagged("first", _min_choice(scorer.first, rows)), **tagged("swapped", _min_choice(scorer.second, rows))}
    return None


def today_paths(args, name: str) -> dict[int, dict]:
    """The ``today`` path of scorer ``name`` at every K: the per-query ``score`` of the checkout ``--today-code``,
    run by bench_rerank_commits.py in a subprocess (same queries, threads, batch size and model); by K."""
    cmd = [sys.executable, str(Path(__file__).with_name("bench_rerank_commits.py")), "--code", str(args.today_code),
           "--scorers", name, "--k", *map(str, args.k), "--queries", str(args.queries),
           "--threads", str(torch.get_num_threads()), "--batch-size", str(args.batch_size), "--model", args.model,
           "--layers", str(args.layers), "--weights", args.weights, "--framing", args.framing, "--device", args.device,
           "--repeats", str(args.repeats), *(["--max-tokens", str(args.max_tokens)] if args.max_tokens else [])]
    ran = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if ran.returncode != 0:
        raise SystemExit(f"error: the today path failed on {args.today_code} ({' '.join(cmd)}):\n{ran.stderr[-3000:]}")
    got = json.loads(ran.stdout.strip().splitlines()[-1])
    return {r["k"]: {**r, "code": got["code"], "matmul_gflops_there": got["matmul_gflops"]} for r in got["results"]}


def max_diff(a: list, b: list) -> float:
    """Largest |score difference| between two paths' rows (RowScores, or lists of scores)."""
    def scores(r) -> torch.Tensor:
        return r.scores if hasattr(r, "scores") else torch.tensor(r)

    return max(float((scores(x) - scores(y)).abs().max()) for x, y in zip(a, b))


def scorers_case(backbone, args) -> tuple[list[dict], dict]:
    """Each scorer's naive, run and today paths at every K on WordNet definitions against their candidate words;
    returns (results, run facts: the matmul reference, the build context)."""
    from freeret.rerank.scorers.lm import base_model, shared_prefix

    device = torch.device(args.device)
    counter = DecoderWork(base_model(backbone), widths(backbone))
    counter.watch_head(shared_prefix(backbone))
    refs = [matmul_gflops(device)]
    qrows = text_rows(max(args.k), args.queries + 1)
    warm, qrows = qrows[0], qrows[1:]
    if args.today_code is None:
        print("today: skipped (no --today-code: a checkout of the code before the change, e.g. "
              "git -C /work/main archive ccb5abb | tar -x -C /tmp/freeret_ccb5abb)", flush=True)
    results, context = [], None
    for name in args.scorers:
        build, context = scorer_builder(backbone, name, args.framing, args.batch_size, args.max_tokens)
        reference = build()
        run_path(reference, [(warm[0], warm[1][:4])], args.queries_per_step), reference.naive(warm[0], warm[1][:1])  # warm-up
        per_k = []
        for k in args.k:
            rows = [(q, c[:k]) for q, c in qrows]
            pairs = sum(len(c) for _, c in rows)
            naive, naive_work = timed_work(counter, lambda r=reference, rs=rows: [r.naive(q, c) for q, c in rs], device)
            ran, run_work = fastest_of(args.repeats, build, lambda s, rs=rows: run_path(s, rs, args.queries_per_step),
                                       counter, device)
            minimum = minimum_tokens(reference, rows)
            per_k.append({"scorer": name, "k": k, "queries": len(rows), "pairs": pairs,
                          "minimum_tokens": minimum, "minimum_tokens_per_pair": sum(minimum.values()) / pairs if minimum else None,
                          "max_abs_score_diff": max_diff(ran, naive), "work": {"naive": naive_work, "run": run_work},
                          "_naive": naive})
        today = today_paths(args, name) if args.today_code is not None else {}
        for rec in per_k:
            naive = rec.pop("_naive")
            work = rec.pop("work")
            if rec["k"] in today:
                got = today[rec["k"]]
                work["today"] = {key: got[key] for key in ("seconds", "forwards", "tokens", "decoder_flops", "head_flops",
                                                           "rounds")}
                rec["max_abs_score_diff_today"] = max_diff(got["scores"], naive)
                rec["today_code"] = got["code"]
            results.append({**rec, "_work": work})
    refs.append(matmul_gflops(device))
    ref = max(refs)  # the machine's rate: the less disturbed of the two (the lower MFU)
    for rec in results:
        rec["paths"] = {path: path_figures(work, rec["pairs"], ref) for path, work in rec.pop("_work").items()}
        print_scorer_line(rec)
    return results, {"matmul_gflops": ref, "matmul_gflops_measured": refs, "build_context": context}


SCORERS_NOTE = (
    "paths: naive = scorer.naive per query (one full forward per prompt), one round; run = the run's path over all "
    "the queries timed as a whole, the fastest of `rounds` rounds, a fresh scorer each (score_block on blocks of "
    "queries_per_step rows where the scorer has it, else score per query); today = the per-query score of the checkout "
    "today_code, in a subprocess with the same queries, threads, batch size and rounds. tokens = decoder token "
    "positions run (padding included; every decoder forward: prompts, prefixes, suffixes, priors), counted by a hook "
    "on the decoder. mfu = (decoder_flops + head_flops) / seconds / matmul_gflops: decoder FLOPs per forward by "
    "flop_formula (no LM head; a forward on a KV cache of n tokens attends at positions n+1..), head FLOPs = 2 * d * "
    "the logits the LM head computed (positions x vocabulary rows, counted by wrapping SharedPrefix.head_logits); "
    "matmul_gflops = the best fp32 torch.mm rate (2048^3) measured before and after the scorers in this process, the "
    "higher of the two (today's MFU uses it too).")


def print_scorer_line(rec: dict) -> None:
    """One line per scorer and K: pairs/s per path, tokens per pair against the minimum, MFU, the score difference."""
    paths = rec["paths"]
    run, naive, today = paths["run"], paths["naive"], paths.get("today")
    speed = " | ".join(f"{p} {paths[p]['pairs_per_s']:.1f}" for p in ("naive", "today", "run") if p in paths)
    ratios = ([f"x{run['pairs_per_s'] / today['pairs_per_s']:.2f} today"] if today else []) + \
        [f"x{run['pairs_per_s'] / naive['pairs_per_s']:.1f} naive"]
    minimum = rec["minimum_tokens_per_pair"]
    tokens = f"tokens/pair run {run['tokens_per_pair']:.1f}" + (
        f" vs min {minimum:.1f} (x{run['tokens_per_pair'] / minimum:.2f})" if minimum else " (no minimum)") + (
        f" today {today['tokens_per_pair']:.1f}" if today else "")
    mfu = f"MFU run {run['mfu']:.0%}" + (f" today {today['mfu']:.0%}" if today else "") + f" naive {naive['mfu']:.0%}"
    print(f"{rec['scorer']} K={rec['k']}: {speed} pairs/s ({', '.join(ratios)}) | {tokens} | {mfu} | "
          f"max |diff| {rec['max_abs_score_diff']:.0e}", flush=True)


def text_rows(k_max: int, queries: int) -> list[tuple[Item, list[Item]]]:
    """WordNet definitions with their own candidate words."""
    rset = load_dataset({"name": "wordnet_rd", "path": str(repo_root() / "data/wordnet_rd/wordnet_rd.jsonl.gz"), "limit": queries})
    return [(rset.items[r.query], [rset.items[c] for c in r.candidates[:k_max]]) for r in rset.rows]


@torch.no_grad()
def hf_naive(scorer: Choice, query: Item, cands: list[Item]) -> torch.Tensor:
    """One plain ``model(**inputs)`` per pair (full logits everywhere), softmax over the option tokens."""
    probs = []
    for cand in cands:
        inputs = scorer._with_images([scorer.prompt(query, cand)], [[p for p in (query.image, cand.image) if p]])
        logits = scorer.bb.model(**inputs, use_cache=False).logits[:, -1].float()  # softcapping (Gemma) included
        probs.append(logits[:, scorer.option_ids].softmax(-1).cpu())
    return torch.cat(probs)


def main() -> None:
    ap = parser(__doc__, model="smollm2_135m", layers=2, weights=True, threads=None,
                threads_help="torch threads (default: torch's)", repeats=3,
                repeats_help="--scorers: rounds of the run and today paths, a fresh scorer each; each path's fastest "
                             "round is kept (naive runs once)", device=True,
                device_help="cpu, or cuda (scores come back to the host each query: timed synchronously)")
    ap.add_argument("--case", choices=["text", "image", "image_candidates"], default="text")
    ap.add_argument("--workers", type=int, nargs="*", default=[],
                    help="image_candidates: also time the fast path with these DataLoader worker counts")
    ap.add_argument("--candidates", choices=["definitions", "words"], default="definitions",
                    help="image case: candidate texts after the 8 captions")
    ap.add_argument("--framing", default="mcq")
    ap.add_argument("--scorers", nargs="*", default=None,
                    help="text case: time these stage-2 scorers (conf/scorer names), naive vs fast, at every --k")
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--k", type=int, nargs="+", default=[50])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--hf", action="store_true", help="also time the textbook per-pair loop with full logits")
    ap.add_argument("--today-code", type=Path, default=None,
                    help="--scorers: a checkout of the code before the change (git archive ... | tar -x -C DIR); its "
                         "per-query score path is timed as `today` (bench_rerank_commits.py, a subprocess)")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="--scorers: BuildContext.max_tokens_per_batch, where this checkout's BuildContext takes it "
                         "(default: the pipeline's, by device: 1024 on a CPU, 8192 on a GPU)")
    ap.add_argument("--queries-per-step", type=int, default=16,
                    help="--scorers: rows per score_block call, where the scorer has score_block")
    args = ap.parse_args()
    set_threads(args.threads)
    default_name = "rerank_scorers.json" if args.scorers else "rerank.json"
    names = {"text": default_name, "image_candidates": f"rerank_image_candidates_{args.model}.json"}
    out = args.out or BENCH_OUT / names.get(args.case, f"rerank_image_{args.candidates}_{args.model}.json")

    backbone, weights = load_weights(args.model, args.layers, weights=args.weights)
    backbone.model.to(args.device)
    print(f"weights: {weights} ({backbone.spec.name})", flush=True)
    device = args.device if args.device == "cpu" else torch.cuda.get_device_name(torch.device(args.device))
    if args.case == "image_candidates":
        rows = image_candidates_case(backbone, Framing.from_dict(conf("framing", args.framing)), args)
        write(out, {"model": backbone.metadata(), "weights": weights, "device": device, "case": args.case, "framing": args.framing,
                   "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                   "tokens_per_s_counts": DecoderWork.PHASES_NOTE + "; image candidates run as full forwards (the vision "
                   "tower's time is not in them)", "results": rows})
        bar_chart(out, [f"K={r['k']}" for r in rows],
                  {"naive (per pair: decode, process, tower)": [r["naive_pairs_per_s"] for r in rows],
                   "fast (each image once)": [r["fast_pairs_per_s"] for r in rows],
                   **{f"fast, {w} workers": [r[f"fast_workers{w}_pairs_per_s"] for r in rows] for w in args.workers}},
                  "pairs / second", f"Rerank, image candidates, {backbone.spec.name}, {torch.get_num_threads()} threads")
        return
    if args.scorers:
        if args.case != "text":
            ap.error("--scorers runs on the text case")
        rows, facts = scorers_case(backbone, args)
        write(out, {"model": backbone.metadata(), "weights": weights, "device": device, "case": "scorers", "framing": args.framing,
                   "batch_size": args.batch_size, "queries": args.queries, "threads": torch.get_num_threads(),
                   "max_tokens_per_batch": args.max_tokens or default_max_tokens(args.device),
                   "queries_per_step": args.queries_per_step,
                   "today_code": str(args.today_code) if args.today_code else None, **facts, "widths": widths(backbone),
                   "paths_note": SCORERS_NOTE, "minimum_note": MINIMUM_NOTE, "flop_formula": flops_per_sequence.__doc__,
                   "results": rows})
        paths = [p for p in ("naive", "today", "run") if all(p in r["paths"] for r in rows)]
        bar_chart(out, [f"{r['scorer']}\nK={r['k']}" for r in rows],
                  {p: [r["paths"][p]["pairs_per_s"] for r in rows] for p in paths},
                  "pairs / second", f"Stage-2 scorers, {backbone.spec.name}, {torch.get_num_threads()} threads")
        return
    dataset = "wordnet_rd" if args.case == "text" else "smoke_mm"
    framing = Framing.from_dict(conf("framing", args.framing)).for_dataset(dataset_prompt(dataset))
    scorer = Choice(backbone, framing, args.batch_size)
    qrows = (image_rows(max(args.k), args.queries, args.candidates) if args.case == "image"
             else text_rows(max(args.k), args.queries))
    scorer.fast_probs(qrows[0][0], qrows[0][1][:4])  # warm-up (and the query image's features into the cache)
    scorer.naive_probs(qrows[0][0], qrows[0][1][:1])
    counter = DecoderWork(scorer.shared.base)
    rows = []
    for k in args.k:
        times = {"naive": 0.0, "fast": 0.0, **({"hf": 0.0} if args.hf else {})}
        work = {name: {"forwards": 0, "tokens": 0} for name in times}
        diff = {"naive": 0.0, **({"hf": 0.0} if args.hf else {})}  # max |score - fast score| per path
        phases: dict[str, dict[str, dict[str, float]]] = {name: {} for name in times}
        counter.take(), counter.take_phases()

        def took(_round: int, path: str, seconds: float, _cpu: float, _result: torch.Tensor, *,
                 times: dict[str, float] = times, work: dict[str, dict[str, int]] = work,
                 phases: dict[str, dict[str, dict[str, float]]] = phases) -> None:
            times[path] += seconds
            for key, n in counter.take().items():
                work[path][key] = work[path].get(key, 0) + n
            add_phases(phases[path], counter.take_phases())  # every path's, the textbook loop's too

        for query, all_cands in qrows:
            cands = all_cands[:k]
            paths = {"naive": lambda q=query, c=cands: scorer.naive_probs(q, c, batch_size=1),
                     "fast": lambda q=query, c=cands: scorer.fast_probs(q, c),
                     **({"hf": lambda q=query, c=cands: hf_naive(scorer, q, c)} if args.hf else {})}
            _, got = best_of(paths, 1, each=took)  # one pass of each path per query, in turn; summed over queries
            for path in diff:
                diff[path] = max(diff[path], float((got[path] - got["fast"]).abs().max()))
        pairs = k * len(qrows)
        rec = {"k": k, "queries": len(qrows), "pairs": pairs, "naive_pairs_per_s": pairs / times["naive"],
               "fast_pairs_per_s": pairs / times["fast"], "speedup": times["naive"] / times["fast"],
               "max_abs_score_diff": max(diff.values()), "max_abs_score_diff_per_path": diff, "work": work,
               "tokens_per_s": phases, **phase_rates(phases["fast"], "fast")}
        if args.hf:
            rec.update(hf_pairs_per_s=pairs / times["hf"], speedup_vs_hf=times["hf"] / times["fast"])
        rows.append(rec)
        print(f"K={k}: naive {rec['naive_pairs_per_s']:.1f} pairs/s | fast {rec['fast_pairs_per_s']:.1f} pairs/s | "
              f"speed-up x{rec['speedup']:.2f} | max |score diff| {rec['max_abs_score_diff']:.2e} | decoder forwards "
              f"naive {work['naive']['forwards']}, fast {work['fast']['forwards']}"
              + (f" | textbook loop {rec['hf_pairs_per_s']:.1f} pairs/s, fast x{rec['speedup_vs_hf']:.2f}" if args.hf else ""))
    prefix_tokens = len(backbone.tokenizer(scorer.split(qrows[0][0])[0], add_special_tokens=False)["input_ids"])
    if qrows[0][0].image:  # the image placeholder expands to the processor's visual tokens
        prefix_tokens = int(scorer._with_images([scorer.split(qrows[0][0])[0]], [[qrows[0][0].image]])["input_ids"].shape[1])
    write(out, {"model": backbone.metadata(), "weights": weights, "device": device, "case": args.case,
               "candidates": args.candidates if args.case == "image" else "wordnet_rd words", "framing": args.framing,
               "batch_size": args.batch_size,
               "threads": torch.get_num_threads(), "prefix_tokens_first_query": prefix_tokens,
               "tokens_per_s_counts": DecoderWork.PHASES_NOTE, "results": rows})
    bar_chart(out, [f"K={r['k']}" for r in rows],
              {**({"textbook loop (full logits)": [r["hf_pairs_per_s"] for r in rows]} if args.hf else {}),
               "naive (one forward per pair)": [r["naive_pairs_per_s"] for r in rows],
               "fast (shared prefix cache)": [r["fast_pairs_per_s"] for r in rows]},
              "pairs / second", f"Rerank ({args.case}), {backbone.spec.name}, {torch.get_num_threads()} CPU threads")

if __name__ == "__main__":
    main()
