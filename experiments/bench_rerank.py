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
``--scorers`` (text case): every named stage-2 scorer (conf/scorer), its ``naive`` (one full forward per prompt:
per pair, per window, and per candidate prior) against its run path (``score``: shared prefixes, batched pairs,
each candidate's prior once per run), side by side; a fresh scorer per K, so no prior is cached across K.
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

import time

import torch

from freeret.bench import BENCH_OUT, bar_chart, best_of, conf, dataset_prompt, parser, set_threads, write
from freeret.bench_models import load_weights
from freeret.data.datasets import load_dataset
from freeret.data.retrieval_set import Item
from freeret.paths import repo_root
from freeret.rerank.framing import Framing
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
    Phase seconds are decoder forward time only, the GPU synchronised before and after each forward."""

    PHASES_NOTE = ("decoder token positions (padding included) per second of decoder forward time, by phase: prefix = "
                   "forwards that fill an empty KV cache (each query's shared prefix), suffix = forwards on a cached "
                   "prefix (candidate suffix batches), full = forwards without a cache (naive pairs, image pairs)")

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.forwards = self.tokens = 0
        self.phases: dict[str, dict[str, float]] = {}
        self._open: tuple[str, int, float] | None = None
        self._device = next(decoder.parameters()).device
        decoder.register_forward_pre_hook(self._count, with_kwargs=True)
        decoder.register_forward_hook(self._done)

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
        phase = "full" if cache is None else "suffix" if cache.get_seq_length() > 0 else "prefix"
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

    def take(self) -> dict[str, int]:
        """The counts since the last call, then zero."""
        out, self.forwards, self.tokens = {"forwards": self.forwards, "tokens": self.tokens}, 0, 0
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


def scorers_case(backbone, args) -> list[dict]:
    """Each scorer's naive vs fast pairs/s at every K on WordNet definitions against their candidate words."""
    from runs import composed

    from freeret.rerank.scorers import scorer_spec
    from freeret.rerank.scorers.base import BuildContext

    prompt = dataset_prompt("wordnet_rd")
    framing = Framing.from_dict(conf("framing", args.framing)).for_dataset(prompt)
    qrows = text_rows(max(args.k), args.queries + 1)
    warm, qrows = qrows[0], qrows[1:]
    rows = []
    for name in args.scorers:
        spec = scorer_spec(composed("scorer", name))
        for k in args.k:
            scorer = spec.build(BuildContext(backbone, framing, prompt, args.batch_size))
            scorer.score(warm[0], warm[1][:4]), scorer.naive(warm[0], warm[1][:1])  # warm-up, on other candidates
            times, diff = {"naive": 0.0, "fast": 0.0}, 0.0
            for query, all_cands in qrows:
                cands = all_cands[:k]
                timing, got = best_of({"naive": lambda s=scorer, q=query, c=cands: s.naive(q, c),  # one pass each
                                       "fast": lambda s=scorer, q=query, c=cands: s.score(q, c)}, 1)
                for path in times:
                    times[path] += timing[path].seconds
                diff = max(diff, float((got["naive"].scores - got["fast"].scores).abs().max()))
            pairs = k * len(qrows)
            rec = {"scorer": name, "k": k, "pairs": pairs, "naive_pairs_per_s": pairs / times["naive"],
                   "fast_pairs_per_s": pairs / times["fast"], "speedup": times["naive"] / times["fast"],
                   "max_abs_score_diff": diff}
            rows.append(rec)
            print(f"{name} K={k}: naive {rec['naive_pairs_per_s']:.1f} pairs/s | fast {rec['fast_pairs_per_s']:.1f} pairs/s"
                  f" | x{rec['speedup']:.2f} | max |score diff| {diff:.2e}", flush=True)
    return rows


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
                threads_help="torch threads (default: torch's)", device=True,
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
        rows = scorers_case(backbone, args)
        write(out, {"model": backbone.metadata(), "weights": weights, "device": device, "case": "scorers", "framing": args.framing,
                   "batch_size": args.batch_size, "queries": args.queries, "threads": torch.get_num_threads(),
                   "results": rows})
        labels = [f"{r['scorer']}\nK={r['k']}" for r in rows]
        bar_chart(out, labels, {"naive": [r["naive_pairs_per_s"] for r in rows], "fast": [r["fast_pairs_per_s"] for r in rows]},
                  "pairs / second", f"Stage-2 scorers, {backbone.spec.name}, {torch.get_num_threads()} CPU threads")
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
        phases: dict[str, dict[str, dict[str, float]]] = {"naive": {}, "fast": {}}
        counter.take(), counter.take_phases()

        def took(_round: int, path: str, seconds: float, _cpu: float, _result: torch.Tensor, *,
                 times: dict[str, float] = times, work: dict[str, dict[str, int]] = work,
                 phases: dict[str, dict[str, dict[str, float]]] = phases) -> None:
            times[path] += seconds
            for key, n in counter.take().items():
                work[path][key] += n
            if path in phases:  # naive and fast (the textbook loop's phases are not taken here)
                add_phases(phases[path], counter.take_phases())

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
