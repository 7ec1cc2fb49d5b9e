"""Context-free option bias of each framing: P(option) when query and candidate carry no content.

    python experiments/option_bias.py --model smollm2_135m
A neutral framing should sit near 1/len(options). Writes JSON and a bar plot. The measure itself is
freeret.probes.framing_sensitivity.option_bias, shared with probes/framing_sensitivity.py.
"""

from __future__ import annotations

from freeret.backbone import ModelSpec, load_backbone
from freeret.bench import BENCH_OUT, bar_chart, conf, parser, write
from freeret.probes.framing_sensitivity import CONTENT_FREE, option_bias
from freeret.rerank.framing import Framing
from freeret.rerank.scorers.choice import Choice


def main() -> None:
    ap = parser(__doc__, model="smollm2_135m", out=BENCH_OUT / "option_bias.json")
    ap.add_argument("--framings", nargs="+", default=["mcq", "yes_no", "true_false", "right_wrong"])
    args = ap.parse_args()
    backbone = load_backbone(ModelSpec.from_dict(conf("model", args.model)))
    results = {}
    for name in args.framings:
        results[name] = option_bias(Choice(backbone, Framing.from_dict(conf("framing", name))))
        print(f"{name:12s} " + "  ".join(f"P({o})={p:.3f}" for o, p in results[name].items()))
    write(args.out, {"model": backbone.metadata(), "content_free_inputs": list(CONTENT_FREE), "bias": results})
    bar_chart(args.out, [f"{n}\n({'/'.join(results[n])})" for n in results],
              {"P(match option)": [list(results[n].values())[0] for n in results]},
              "P(match option), content-free", f"Context-free option bias, {args.model} (dashed: neutral)", hline=0.5)

if __name__ == "__main__":
    main()
