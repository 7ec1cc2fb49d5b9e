"""What a run scores and with which model: the dataset checked with the tokenizer alone (seed, threads, device,
checkpoint, every row and item), then the weights; :class:`SharedModel` carries both across a suite's datasets."""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import torch

from freeret.backbone import Backbone, load_backbone
from freeret.backbone.loading import count_layers, resolve_checkpoint
from freeret.data.datasets import load_dataset
from freeret.data.images import set_image_limit
from freeret.data.retrieval_set import RetrievalSet
from freeret.data.validate import Report, check_set, usable_rows
from freeret.distributed import is_main
from freeret.errors import ConfigError, DataError
from freeret.lit import run_device
from freeret.preflight import TextSide, context_length, load_text_side, text_budget
from freeret.rag import require_answers
from freeret.retrieve.fusion import RetrieverSpec
from freeret.retrieve.trained import check_text_only
from freeret.run.plan import Plan


@dataclass
class SharedModel:
    """What a benchmark's datasets share: the backbone (the first run that needs it loads it, after its own checks)
    and the tokenizer side each dataset's rows are checked with."""

    backbone: Backbone | None = None
    text_sides: dict[tuple[str, tuple[str, str | None]], tuple[TextSide, int]] = field(default_factory=dict)


@dataclass
class Inputs:
    """What a run scores, checked before the weights load: the usable rows, the input report, the checkpoint."""

    rset: RetrievalSet
    report: Report
    missed: int  # rows counted as misses: failed query or positive, or unreadable
    checkpoint: tuple[str, str | None]
    device: torch.device | None  # where to load the weights (None: a shared backbone is already loaded)


def text_side(plan: Plan, checkpoint: tuple[str, str | None], shared: SharedModel | None) -> tuple[TextSide, int]:
    """The tokenizer side and context length of the run's checkpoint: loaded once per suite (each dataset of a
    benchmark checks its rows with the same tokenizer; reloading it cost seconds per dataset)."""
    key = (repr(plan.spec), checkpoint)
    if shared is not None and key in shared.text_sides:
        return shared.text_sides[key]
    side = load_text_side(plan.spec, checkpoint)
    found = side, context_length(plan.spec, checkpoint, side)
    if shared is not None:
        shared.text_sides[key] = found
    return found


def prepare(plan: Plan, shared: SharedModel | None = None) -> Inputs:
    """Load the dataset and check it with the tokenizer alone: the device (a device map under DDP fails here), the
    checkpoint, the layer index, the framing's option tokens, every row and item (bad input is recorded in
    ``errors.jsonl`` and its rows count as misses; ``strict=true`` stops at the first one)."""
    cfg = plan.cfg
    rset = load_dataset(cfg["dataset"])
    if plan.pipeline == "rag":
        require_answers(rset)
    if plan.scorer is not None:
        plan.scorer.check_modalities(rset)  # e.g. image candidates under candidate_likelihood: one line, no weights
    if plan.views is not None and plan.views.expand.active and any(rset.items[r.query].image for r in rset.rows):
        raise ConfigError(f"expand={plan.views.expand.name} generates from text; dataset {rset.name} has image queries")
    retriever = RetrieverSpec.from_dict(cfg.get("retriever"))
    if retriever.trained:
        check_text_only(rset, retriever.name)  # the trained baseline embeds text only: one line, no weights
    L.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    loaded = shared.backbone if shared else None
    device = run_device(cfg, plan.spec) if loaded is None else None
    checkpoint = resolve_checkpoint(plan.spec)
    plan.layer.resolve(count_layers(plan.spec, checkpoint) if loaded is None else loaded.num_layers)
    side, context = text_side(plan, checkpoint, shared)
    if plan.scorer is not None:
        plan.scorer.preflight(side, plan.prompt, plan.framing)  # single-token options and labels
    set_image_limit((cfg.get("images") or {}).get("max_pixels"))
    budget = text_budget(side, plan.prior, context, any(it.image for it in rset.items.values()))
    report = check_set(rset, bool(cfg.get("strict", False)), None, side.count_tokens, side.cut_tokens, budget)
    if is_main():
        report.write(plan.run_dir, rset.name)
    rset, missed = usable_rows(rset, report.failed_items)
    n_missed = len(missed) + report.bad_rows
    if not rset.rows:
        raise DataError(f"{rset.name}: no row can be scored ({n_missed} failed); the reasons are in "
                        f"{plan.run_dir / 'errors.jsonl'}")
    return Inputs(rset, report, n_missed, checkpoint, device)


def load(plan: Plan, inputs: Inputs, shared: SharedModel | None = None) -> Backbone:
    """The backbone: the one a benchmark already loaded, else the weights onto the run's device."""
    if shared is not None and shared.backbone is not None:
        return shared.backbone
    backbone = load_backbone(plan.spec, inputs.checkpoint, inputs.device)
    if shared is not None:
        shared.backbone = backbone
    return backbone
