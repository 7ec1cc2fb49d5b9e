"""Stage 2 on two checkouts of FreeRet: image candidates (pairs/s, image decodes, processor calls), or text scorers.

    git archive b8ca8a9 | tar -x -C /tmp/old        # the code before issue 12
    python experiments/bench_rerank_commits.py --code /tmp/old --k 8
    python experiments/bench_rerank_commits.py --k 8  # this checkout
    git -C /work/main archive ccb5abb | tar -x -C /tmp/freeret_ccb5abb
    python experiments/bench_rerank_commits.py --code /tmp/freeret_ccb5abb --scorers query_likelihood choice --k 10 50

Image candidates (default): times the choice scorer's ``score`` (the path a run takes; ``PairScorer`` before issue
24) over 4 caption queries x K JPEG candidates (``bench_rerank.candidate_images``) on the tiny Qwen2-VL, one
thread, and counts image decodes (``freeret.data.visual.open_image``) and image-processor calls (``preprocess``)
with spies. Prints JSON, one line per K.

``--scorers`` (text): each named stage-2 scorer, built from that checkout's ``conf/scorer`` (composed as run.py
does, through ``runs.composed``) on ``--model``, times its per-query ``score`` over the WordNet rows that
``bench_rerank.py --scorers`` uses (the fastest of ``--repeats`` rounds, a fresh scorer each, after a warm-up on
other candidates) and counts the
decoder's forwards, tokens and FLOPs (``bench_rerank.DecoderWork``). Prints one JSON object: per scorer and K,
pairs/s, tokens, forwards, seconds, FLOPs, MFU against an fp32 matmul measured here, and the scores.
``bench_rerank.py --today-code DIR`` runs this mode as its ``today`` path.

The checkout's ``freeret`` is imported; the bench helpers (``freeret/bench.py``) and ``bench_rerank.py`` are this
checkout's, so an older checkout that lacks some helpers still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parent


def on_code(code: Path) -> None:
    """Run this script again with ``code``'s freeret first on the import path (PYTHONPATH), unless it already is."""
    if os.environ.get("FREERET_BENCH_CODE") == str(code.resolve()):
        return
    path = os.pathsep.join([str(code.resolve()), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "PYTHONPATH": path, "FREERET_BENCH_CODE": str(code.resolve())}
    os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)


def this_bench():  # noqa: ANN201 - a module
    """This checkout's ``freeret/bench.py`` as ``freeret.bench`` inside whichever checkout's ``freeret`` is imported
    (``bench_rerank`` imports helpers from it that an older checkout's copy lacks)."""
    import importlib.util

    import freeret

    path = (EXPERIMENTS.parent / "freeret" / "bench.py").resolve()
    module = sys.modules.get("freeret.bench")
    if module is not None and Path(module.__file__).resolve() == path:
        return module
    spec = importlib.util.spec_from_file_location("freeret.bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["freeret.bench"] = module
    spec.loader.exec_module(module)
    freeret.bench = module
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, default=EXPERIMENTS.parent, help="a FreeRet checkout (default: this one)")
    ap.add_argument("--k", type=int, nargs="+", default=[8])
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--scorers", nargs="+", default=None, help="text mode: these conf/scorer names (see the docstring)")
    ap.add_argument("--model", default="smollm2_135m", help="text mode: a conf/model name, or qwen2vl_2b_dims")
    ap.add_argument("--layers", type=int, default=2, help="text mode: decoder layers of qwen2vl_2b_dims")
    ap.add_argument("--weights", choices=["real", "random", "auto"], default="real", help="text mode: as bench_rerank.py's")
    ap.add_argument("--framing", default="mcq", help="text mode: the choice scorers' conf/framing")
    ap.add_argument("--batch-size", type=int, default=16, help="text mode: BuildContext.batch_size")
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="text mode: BuildContext.max_tokens_per_batch, if it has it (default: by device)")
    ap.add_argument("--device", default="cpu", help="text mode: cpu, or cuda")
    ap.add_argument("--repeats", type=int, default=1, help="text mode: rounds, a fresh scorer each; the fastest is kept")
    args = ap.parse_args()
    on_code(args.code)  # that checkout's freeret wins
    this_bench()
    if args.scorers:
        text_scorers(args)
    else:
        image_candidates(args)


def text_scorers(args: argparse.Namespace) -> None:
    """The per-query ``score`` path of each of ``--scorers`` at every K (see the module docstring); prints JSON."""
    import torch
    from bench_rerank import DecoderWork, fastest_of, path_figures, scorer_builder, text_rows

    import freeret
    from freeret.bench import matmul_gflops, widths
    from freeret.bench_models import load_weights
    from freeret.rerank.scorers.lm import base_model, shared_prefix

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bb, weights = load_weights(args.model, args.layers, weights=args.weights)
    bb.model.to(device)
    counter = DecoderWork(base_model(bb), widths(bb))
    counter.watch_head(shared_prefix(bb))
    ref = matmul_gflops(device)
    qrows = text_rows(max(args.k), args.queries + 1)
    warm, qrows = qrows[0], qrows[1:]
    results = []
    for name in args.scorers:
        build, context = scorer_builder(bb, name, args.framing, args.batch_size, args.max_tokens)
        build().score(warm[0], warm[1][:4])  # warm-up, on other candidates
        for k in args.k:
            rows = [(q, c[:k]) for q, c in qrows]
            pairs = sum(len(c) for _, c in rows)
            got, work = fastest_of(args.repeats, build, lambda s, rs=rows: [s.score(q, c) for q, c in rs], counter, device)
            results.append({"scorer": name, "k": k, "queries": len(rows), "pairs": pairs, **path_figures(work, pairs, ref),
                            "build_context": context, "scores": [r.scores.tolist() for r in got]})
    print(json.dumps({"code": str(Path(freeret.__file__).parent.parent), "model": bb.spec.name, "weights": weights,
                      "threads": torch.get_num_threads(), "matmul_gflops": ref, "results": results}))


def image_candidates(args: argparse.Namespace) -> None:
    """The choice scorer on image candidates, one thread (see the module docstring); prints JSON per K."""
    import torch
    from bench_rerank import candidate_images
    from omegaconf import OmegaConf

    import freeret
    from freeret.backbone import ModelSpec, load_backbone
    from freeret.data import visual
    from freeret.data.retrieval_set import Item
    from freeret.rerank.framing import Framing

    try:
        from freeret.rerank.scorers.choice import Choice as PairScorer
    except ImportError:  # a checkout from before issue 24 (the choice scorer was rerank/scorer.py's PairScorer)
        from freeret.rerank.scorer import PairScorer

    try:
        from freeret.toy.smoke import CAPTIONS
    except ImportError:  # a checkout from before the toy models and data moved to freeret/toy
        try:
            from freeret.testing.smoke import CAPTIONS
        except ImportError:  # ... or from before they moved to freeret/testing
            from freeret.data.smoke import CAPTIONS

    torch.set_num_threads(args.threads)
    bb = load_backbone(ModelSpec(name="tiny_qwen2vl", family="qwen2_vl", source="tiny"))
    framing = Framing.from_dict(OmegaConf.to_container(OmegaConf.load(EXPERIMENTS.parent / "conf/framing/mcq.yaml")))
    counts = {"decodes": 0, "processor_calls": 0}

    def spy(owner, name, counter):
        original = getattr(owner, name)

        def wrapped(*a, **kw):
            counts[counter] += 1
            return original(*a, **kw)

        setattr(owner, name, wrapped)

    spy(visual, "open_image", "decodes")
    spy(type(bb.processor.image_processor), "preprocess", "processor_calls")
    queries = [Item.make("query", c, None) for c in list(CAPTIONS.values())[: args.queries]]
    for k in args.k:
        cands = candidate_images(k)
        PairScorer(bb, framing, batch_size=16).score(queries[0], cands[:1])  # warm-up
        counts.update(decodes=0, processor_calls=0)
        scorer = PairScorer(bb, framing, batch_size=16)
        start = time.perf_counter()
        for query in queries:
            scorer.score(query, cands)
        seconds = time.perf_counter() - start
        print(json.dumps({"code": str(Path(freeret.__file__).parent.parent), "queries": len(queries), "k": k,
                          "pairs_per_s": len(queries) * k / seconds, **counts}))


if __name__ == "__main__":
    main()
