"""Stage-2 image candidates on two checkouts of FreeRet: pairs/s of the default path, image decodes and processor calls.

    git archive b8ca8a9 | tar -x -C /tmp/old        # the code before issue 12
    python experiments/bench_rerank_commits.py --code /tmp/old --k 8
    python experiments/bench_rerank_commits.py --k 8  # this checkout

Times the choice scorer's ``score`` (the path a run takes; ``PairScorer`` before issue 24) over 4 caption
queries x K JPEG candidates (``bench_rerank.candidate_images``) on the tiny Qwen2-VL, one thread, and counts image
decodes (``freeret.data.visual.open_image``) and image-processor calls (``preprocess``) with spies. Prints JSON.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, default=EXPERIMENTS.parent, help="a FreeRet checkout (default: this one)")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--queries", type=int, default=4)
    args = ap.parse_args()
    on_code(args.code)  # that checkout's freeret wins
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

    torch.set_num_threads(1)
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
    cands = candidate_images(args.k)
    PairScorer(bb, framing, batch_size=16).score(queries[0], cands[:1])  # warm-up
    counts.update(decodes=0, processor_calls=0)
    scorer = PairScorer(bb, framing, batch_size=16)
    start = time.perf_counter()
    for query in queries:
        scorer.score(query, cands)
    seconds = time.perf_counter() - start
    print(json.dumps({"code": str(Path(freeret.__file__).parent.parent), "queries": len(queries), "k": args.k,
                      "pairs_per_s": len(queries) * args.k / seconds, **counts}))


if __name__ == "__main__":
    main()
