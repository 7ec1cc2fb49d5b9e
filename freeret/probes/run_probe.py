"""One probe run from a plain config mapping: load the model, measure, write JSON + PNGs, log.

Entry points (``probes/*.py``) compose the config with Hydra and call :func:`run_probe`; tests call it directly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from freeret.atomic_files import write_json
from freeret.backbone import Backbone, ModelSpec, load_backbone
from freeret.backbone.loading import resolve_checkpoint
from freeret.data.datasets import load_dataset
from freeret.data.retrieval_set import Item
from freeret.embed.layers import LayerSpec
from freeret.embed.priors import Prior
from freeret.errors import ConfigError
from freeret.eval.loggers import make_logger
from freeret.eval.results import environment
from freeret.paths import repo_root
from freeret.probes import anisotropy, framing_sensitivity, lexical_bias
from freeret.probes.figures import draw
from freeret.probes.sweep import short_label, sweep_items
from freeret.prompts import DatasetPrompt
from freeret.rerank.framing import Framing


def _tail(profile: list[dict[str, Any]], num_layers: int) -> None:
    """Name each point the paper's way (attn_last, mlp_last-1, ...) in place."""
    for rec in profile:
        rec["short"] = short_label(rec["point"], num_layers)


def _highlight(cfg: Mapping[str, Any], num_layers: int) -> str | None:
    """The label of the configured embedding point (the FreeRet read-out), marked on depth plots."""
    layer = LayerSpec.from_dict(cfg.get("layer") or {})
    return None if layer.point == "final_norm" else f"{layer.point}_{layer.resolve(num_layers)}"


def _prior(cfg: Mapping[str, Any]) -> Prior:
    """The configured prior, bound to the configured dataset's prompt facts."""
    return Prior.from_dict(cfg["prior"]).for_dataset(DatasetPrompt.from_config(cfg["dataset"]))


def _framings(cfg: Mapping[str, Any], pcfg: Mapping[str, Any]) -> list[Framing]:
    """The framings the framing probe compares (``probe.framings``, else the framing group), bound to the dataset."""
    prompt = DatasetPrompt.from_config(cfg["dataset"])
    return [Framing.from_dict(f).for_dataset(prompt) for f in (pcfg.get("framings") or [cfg["framing"]])]


def run_anisotropy(cfg: Mapping[str, Any], pcfg: Mapping[str, Any], bb: Backbone) -> dict[str, Any]:
    """Anisotropy of unrelated dataset items (seeded sample of one role) at every point."""
    n_items, role = int(pcfg.get("n_items", 200)), str(pcfg.get("role", "target"))
    rset = load_dataset({**cfg["dataset"], "limit": cfg["dataset"].get("limit") or n_items})
    items = sorted((it for it in rset.items.values() if it.role == role), key=lambda it: it.key)
    random.Random(int(cfg.get("seed", 0))).shuffle(items)
    items = items[:n_items]
    if len(items) < 3:
        raise ConfigError(f"anisotropy needs at least 3 {role} items in dataset '{rset.name}', found {len(items)}")
    sweep = sweep_items(bb, items, _prior(cfg), int(pcfg.get("batch_size", 16)))
    profile = anisotropy.anisotropy_profile(sweep)
    _tail(profile, bb.num_layers)
    worst = max(profile[1:], key=lambda r: r["mean_cosine"])  # emb is one token's embedding: identical for all items
    return {"dataset": rset.name, "role": role, "n_items": len(items), "profile": profile,
            "summary": {"most_collapsed_point": worst["point"], "max_mean_cosine": worst["mean_cosine"],
                        **{f"{k}@{rec['short']}": rec[k] for rec in profile[-2:]
                           for k in ("mean_cosine", "effective_rank", "top_pc_share")}}}


def lexical_claims(profile: list[dict[str, Any]], n: int = 5, factor: float = 5.0) -> dict[str, Any]:
    """The paper's three claims on the last ``n`` points; a collapse or jump must be ``factor`` x the earlier steps."""
    tail = profile[-n:]
    attn_last, mlp_last = profile[-2], profile[-1]
    change = [1 - r["alpha"] for r in tail]
    jumps = [b["beta"] - a["beta"] for a, b in zip(profile[-n - 1 :], tail)]
    return {
        "alpha_collapses_at_final_mlp": change[-1] > factor * max(change[:-1]),
        "beta_jumps_at_final_mlp": jumps[-1] > factor * max(abs(j) for j in jumps[:-1]),
        "synonym_similarity_drops_at_final_mlp": mlp_last["synonym_cosine"] < attn_last["synonym_cosine"],
        "synonym_gap_shrinks_at_final_mlp": mlp_last["synonym_minus_random"] < attn_last["synonym_minus_random"],
        "criteria": f"over the last {n} points: 1-alpha at mlp_last > {factor:g}x its largest earlier value; the beta "
                    f"step into mlp_last > {factor:g}x the largest earlier |step|; synonym cosine (and its margin over "
                    "random pairs) lower at mlp_last than at attn_last",
    }


def run_lexical_bias(cfg: Mapping[str, Any], pcfg: Mapping[str, Any], bb: Backbone) -> dict[str, Any]:
    """alpha, beta, logit lens and synonym vs random similarity at every point."""
    seed = int(cfg.get("seed", 0))
    pairs = lexical_bias.synonym_pairs(int(pcfg.get("n_pairs", 250)), seed)
    items = [Item.make("target", w, None) for pair in pairs for w in pair]
    sweep = sweep_items(bb, items, _prior(cfg), int(pcfg.get("batch_size", 16)))
    profile = lexical_bias.lexical_profile(bb, sweep, pairs, seed)
    _tail(profile, bb.num_layers)
    lens_rows = list(range(min(int(pcfg.get("lens_items", 4)), len(items))))
    lens = lexical_bias.logit_lens(bb, sweep, lens_rows, int(pcfg.get("top_k", 5)))
    decode = bb.tokenizer.convert_ids_to_tokens
    return {
        "n_pairs": len(pairs), "pairs": pairs, "profile": profile,
        "logit_lens": {"items": [items[i].text for i in lens_rows],
                       "next_token": [decode(int(sweep.next_token[i])) for i in lens_rows], "top_k": lens},
        "summary": {f"{k}@{rec['short']}": rec[k] for rec in profile[-6:]
                    for k in ("alpha", "beta", "synonym_cosine", "random_cosine")},
        "claims": lexical_claims(profile),
    }


def run_framing_sensitivity(cfg: Mapping[str, Any], pcfg: Mapping[str, Any], bb: Backbone) -> dict[str, Any]:
    """Option bias, accuracy and order-flip rate of every framing (``probe.framings``, else the framing group)."""
    framings = _framings(cfg, pcfg)
    n_queries = int(pcfg.get("n_queries", 20))
    rset = load_dataset({**cfg["dataset"], "limit": cfg["dataset"].get("limit") or n_queries})
    triples = framing_sensitivity.labelled_pairs(rset, n_queries, int(cfg.get("seed", 0)))
    content_free = tuple(pcfg.get("content_free") or framing_sensitivity.CONTENT_FREE)
    records = [framing_sensitivity.framing_record(bb, f, triples, content_free) for f in framings]
    by_name = {r["framing"]: r for r in records}
    summary = {f"{k}@{r['framing']}": r[k] for r in records for k in ("p_match_content_free", "accuracy", "flip_rate")}
    claims = {}
    if "mcq" in by_name and len(records) > 1:
        bias = {n: abs(r["p_match_content_free"] - 1 / len(r["options"])) for n, r in by_name.items()}
        claims = {"mcq_least_biased": min(bias, key=bias.get) == "mcq",
                  "mcq_most_accurate": max(by_name, key=lambda n: by_name[n]["accuracy"]) == "mcq",
                  "criteria": "|P(match)-1/options| on content-free inputs is smallest for mcq; mcq has the top accuracy"}
    return {"dataset": rset.name, "n_pairs": 2 * len(triples), "content_free_inputs": list(content_free),
            "records": records, "summary": summary, "claims": claims}


PROBES: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any], Backbone], dict[str, Any]]] = {
    "anisotropy": run_anisotropy, "lexical_bias": run_lexical_bias, "framing_sensitivity": run_framing_sensitivity}


def log_probe(logger, name: str, payload: Mapping[str, Any], pngs: list[Path]) -> None:
    """Scalars per point (step = depth), the summary, a table of the profile/records, and the figures."""
    rows = payload.get("profile") or payload.get("records") or []
    numeric = lambda rec: {f"{name}/{k}": v for k, v in rec.items()  # noqa: E731
                           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    step = 0
    if "profile" in payload:
        for step, rec in enumerate(rows):
            logger.log_metrics(numeric(rec), step=step)
    logger.log_metrics({f"{name}/summary/{k}": v for k, v in payload["summary"].items()}, step=step + 1)
    columns = sorted({k for rec in rows for k, v in rec.items() if isinstance(v, (int, float, str)) or v is None})
    if hasattr(logger, "log_table") and rows:
        logger.log_table(key=f"{name}/table", columns=columns, data=[[rec.get(c) for c in columns] for rec in rows])
    if hasattr(logger, "log_image") and pngs:
        logger.log_image(key=f"{name}/figures", images=[str(p) for p in pngs], caption=[p.stem for p in pngs])


def resolve_framings(config: dict[str, Any], conf_dir: Path | None = None) -> None:
    """Replace framing names in ``probe.framing_sensitivity.framings`` by their ``conf/framing`` entries, in place
    (the probe entry points and the scaling study compose configs with names; the probe needs the templates)."""
    # OmegaConf reads the YAML as the entry points always did (omegaconf, not Hydra, which stays out of freeret)
    from omegaconf import OmegaConf

    folder = (conf_dir or repo_root() / "conf") / "framing"
    section = (config.get("probe") or {}).get("framing_sensitivity") or {}
    resolved = []
    for name in section.get("framings") or []:
        if isinstance(name, dict):
            resolved.append(name)
            continue
        path = folder / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
            raise ConfigError(f"framing {name!r} is not in conf/framing ({known})")
        resolved.append(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    if section:
        section["framings"] = resolved


def run_probe(name: str, cfg: Mapping[str, Any], backbone: Backbone | None = None) -> dict[str, Any]:
    """Run probe ``name``; write ``<run_dir>/probes/<name>.json`` and its PNGs; return the payload.

    ``backbone``: an already loaded ``cfg['model']`` (a study running several probes loads it once)."""
    if name not in PROBES:
        raise ConfigError(f"probe {name!r} is not one of {', '.join(PROBES)}")
    start = time.perf_counter()
    pcfg = dict((cfg.get("probe") or {}).get(name) or {})
    pcfg.setdefault("batch_size", (cfg.get("probe") or {}).get("batch_size", 16))
    torch.manual_seed(int(cfg.get("seed", 0)))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    _prior(cfg), _framings(cfg, pcfg) if name == "framing_sensitivity" else None  # prompt facts: checked before weights
    if backbone is None:
        spec = ModelSpec.from_dict(cfg["model"])
        backbone = load_backbone(spec, resolve_checkpoint(spec))
    bb = backbone
    run_dir = Path(cfg.get("run_dir") or "outputs/probe")
    logger = make_logger(cfg.get("logger"), run_dir)
    result = PROBES[name](cfg, pcfg, bb)
    payload = {"probe": name, **result, "prior": Prior.from_dict(cfg["prior"]).name,
               "highlight": _highlight(cfg, bb.num_layers), "model": bb.metadata(),
               "seconds": time.perf_counter() - start, "environment": environment(), "config": dict(cfg)}
    out_dir = run_dir / "probes"
    pngs = draw(payload, out_dir)
    payload["figures"] = [p.name for p in pngs]
    write_json(out_dir / f"{name}.json", payload)
    if logger is not None:
        logger.log_hyperparams(dict(cfg))
        log_probe(logger, name, payload, pngs)
        logger.finalize("success")
    return payload


def summary_line(payload: Mapping[str, Any]) -> str:
    """One line per run: the probe, the model, its headline numbers."""
    s = payload["summary"]
    keys = [k for k in s if k.endswith(("@attn_last", "@mlp_last"))] or list(s)[:8]
    shown = ", ".join(f"{k}={s[k]:.3f}" if isinstance(s[k], float) else f"{k}={s[k]}" for k in keys)
    return f"{payload['probe']}: model={payload['model']['name']} | {shown} | {payload['seconds']:.0f}s"
