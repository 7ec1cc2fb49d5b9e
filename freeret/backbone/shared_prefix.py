"""One shared-prefix routine: run a prefix once, then many right-padded suffixes after it from its KV cache.

Every caller that runs N sequences sharing their first tokens uses it: stage-1 embedding (``prefix.py``: prompts
that share a system turn and an instruction), the choice scorer (``rerank/scorers/choice.py``: a query prompt, then
each candidate) and likelihood scorers (the candidate's tokens after a query prompt).

- :meth:`SharedPrefix.run_prefix` runs one row (images allowed) into a KV cache, stopped early after a captured
  point (stage 1) or through the final norm (scorers: the last state predicts the first suffix token); the family's
  position rule says where the text after it starts (M-RoPE: shifted after an image, on three axes).
- Each suffix batch attends to a read-only view of that cache expanded to the batch (no copy of the prefix: each
  layer concatenates the prefix's keys and values with the batch's own, for that layer's attention only, and keeps
  nothing), with the mask ones over the prefix then the suffix mask, and explicit positions.
- It returns a captured sub-layer state at each row's last real token (:meth:`~SharedPrefix.states`), the LM head's
  logits there, for some vocabulary rows only (:meth:`~SharedPrefix.last_logits`), or the log-probability of every
  suffix token given the prefix and the tokens before it (:meth:`~SharedPrefix.token_logprobs`).

Results equal the plain full forward up to float rounding (tests/test_prefix.py, tests/test_rerank.py). Devices:
inputs go to the embedding's device; a state is indexed on its own device (with ``device_map`` the last layers may
sit on another GPU than the embeddings); logits are computed on the LM head's device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Cache, DynamicCache
from transformers.cache_utils import CacheLayerMixin

from freeret.backbone.capture import capture, run_until_captured
from freeret.backbone.families import Family, PrefixPositions, family_of
from freeret.embed.layers import LayerSpec


def splits_exactly(tokenizer: Any, prefix: str, suffix: str, whole: str) -> bool:
    """Whether tokenising ``prefix`` and ``suffix`` apart gives ``whole``'s ids: the shared-prefix path scores the
    same tokens as one forward over the whole prompt only then (a split inside a word merges differently)."""
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return ids(prefix) + ids(suffix) == ids(whole)


class _PrefixView(CacheLayerMixin):
    """One layer of a prefix cache, expanded to a batch as a view: each update returns prefix + new states and keeps
    nothing, so the prefix is never written and serves any number of batches."""

    def __init__(self, source: CacheLayerMixin, n: int) -> None:
        super().__init__()
        self.source = source
        self.is_sliding = getattr(source, "is_sliding", False)
        self.is_initialized = source.is_initialized
        if source.is_initialized:
            self.keys = source.keys.expand(n, *source.keys.shape[1:])
            self.values = source.values.expand(n, *source.values.shape[1:])

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("a prefix view is built from a filled prefix cache")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:  # a layer the prefix never reached (it stopped earlier): nothing cached
            return key_states, value_states
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.source.get_mask_sizes(query_length)

    def get_seq_length(self) -> int:
        return self.source.get_seq_length()

    def get_max_length(self) -> int:
        return self.source.get_max_length()


@dataclass
class Prefix:
    """A prefix run once: its cache (never written after), its length, the position rule for what follows, how deep
    it ran (``stop_at``: None = through the final norm) and then its last token's final state (predicts token 1)."""

    cache: DynamicCache
    length: int
    positions: PrefixPositions
    stop_at: LayerSpec | None
    last_hidden: torch.Tensor | None

    def view(self, n: int) -> Cache:
        """The cache for a batch of ``n`` suffixes: read-only views, no copy."""
        return Cache(layers=[_PrefixView(layer, n) for layer in self.cache.layers])


class SharedPrefix:
    """Runs prefixes and their right-padded suffix batches on one model (see the module docstring)."""

    def __init__(self, model: nn.Module, family: Family | None = None) -> None:
        self.model = model
        self.family = family or family_of(model)
        self.base = self.family.base_model(model)
        _, self.layers, self.norm = self.family.decoder_parts(model)
        self.config = model.config.get_text_config(decoder=True)
        self.head = model.get_output_embeddings()
        self.softcap = getattr(self.config, "final_logit_softcapping", None)

    @property
    def input_device(self) -> torch.device:
        """Where token ids go: the embedding's device."""
        return self.base.get_input_embeddings().weight.device

    def _capture(self, specs: Sequence[LayerSpec]):
        return capture(self.layers, self.norm, list(specs), attn_point=self.family.attn_point)

    @torch.no_grad()
    def run_prefix(self, inputs: Mapping[str, Any], stop_at: LayerSpec | None = None) -> Prefix:
        """Run one prefix row (``inputs`` as the model takes them: ids, and pixels or image features if any).

        ``stop_at``: stop after that point (then suffixes can only be read up to it); None runs through the final
        norm and keeps the last token's state, which :meth:`token_logprobs` needs.
        """
        device = self.input_device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items() if k != "position_ids"}
        ids = inputs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError(f"a prefix is one row, got {ids.shape[0]}")
        inputs.setdefault("attention_mask", torch.ones_like(ids))
        positions = self.family.prefix_positions(self.base, inputs)
        if positions.prefix_ids is not None:
            inputs["position_ids"] = positions.prefix_ids
        cache = DynamicCache(config=self.config)
        last = None
        if stop_at is None:
            last = self.base(**inputs, past_key_values=cache, use_cache=True).last_hidden_state[0, -1]
        else:
            with self._capture([stop_at]):  # layers past the point are never needed
                run_until_captured(self.base, **inputs, past_key_values=cache, use_cache=True)
        return Prefix(cache, int(ids.shape[1]), positions, stop_at, last)

    def _suffixes(self, prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor, spec: LayerSpec | None) -> torch.Tensor:
        """(n, width, hidden) states of right-padded suffixes after ``prefix``: at ``spec``, or after the final norm."""
        if spec is None:
            return self._suffix_states(prefix, ids, mask, None)
        return self._suffix_states(prefix, ids, mask, (spec,))[spec]

    def _suffix_states(self, prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor,
                       specs: Sequence[LayerSpec] | None) -> Any:
        """The suffixes' (n, width, hidden) states at each of ``specs`` (a dict; the forward stops after the deepest),
        or after the final norm (one tensor) when ``specs`` is None."""
        if specs is None and prefix.stop_at is not None:
            raise ValueError(f"this prefix stopped at {prefix.stop_at.label}: run it through for logits")
        n_layers = len(self.layers)
        for spec in specs or ():
            if prefix.stop_at is not None and spec.order(n_layers) > prefix.stop_at.order(n_layers):
                raise ValueError(f"this prefix stopped at {prefix.stop_at.label}, before {spec.label}")
        device = self.input_device
        ids, mask = ids.to(device), mask.to(device)
        n, width = ids.shape
        kwargs = {"input_ids": ids, "attention_mask": torch.cat([mask.new_ones(n, prefix.length), mask], dim=1),
                  "position_ids": prefix.positions.suffix(n, width, device), "past_key_values": prefix.view(n),
                  "use_cache": True}
        if specs is None:
            return self.base(**kwargs).last_hidden_state
        with self._capture(specs) as got:
            run_until_captured(self.base, **kwargs)
        return dict(got)

    @staticmethod
    def _at_last(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each row's state at its last real token, indexed on the states' device."""
        last = mask.to(states.device).sum(1) - 1
        return states[torch.arange(states.shape[0], device=states.device), last]

    @torch.no_grad()
    def states(self, prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
        """(n, hidden) state at ``spec`` at each suffix's last real token (on that layer's device); the forward
        stops there."""
        return self._at_last(self._suffixes(prefix, ids, mask, spec), mask)

    @torch.no_grad()
    def pooled_states(self, prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor, specs: Sequence[LayerSpec],
                      weights: torch.Tensor | None = None) -> dict[LayerSpec, torch.Tensor]:
        """(n, hidden) per point of ``specs`` (one forward, stopped after the deepest): at each suffix's last real
        token, or, with ``weights`` (n, width, aligned with the suffixes, 0 at padding), the states' weighted sum
        over positions (fp32; ``pooling=mean`` / ``last_k``)."""
        got = self._suffix_states(prefix, ids, mask, specs)
        if weights is None:
            return {s: self._at_last(h, mask) for s, h in got.items()}
        return {s: torch.einsum("bt,btd->bd", weights.to(h.device).float(), h.float()) for s, h in got.items()}

    @torch.no_grad()
    def last_logits(self, prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor,
                    rows: torch.Tensor | None = None) -> torch.Tensor:
        """(n, rows) fp32 logits at each suffix's last real token, for vocabulary ``rows`` only (all when None)."""
        return self.head_logits(self._at_last(self._suffixes(prefix, ids, mask, None), mask), rows)

    @torch.no_grad()
    def token_logprobs(self, prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor,
                       scored: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log P(suffix token j | prefix, suffix tokens before j), fp32 (n, width), 0 at padding; and the (n, width)
        bool mask of the tokens read (real, and ``scored``). The LM head and the log-softmax over the vocabulary run at
        real suffix tokens only, or only where ``scored`` (an (n, width) bool mask within the real tokens) is true: the
        rest read 0."""
        if prefix.last_hidden is None:
            raise ValueError(f"this prefix stopped at {prefix.stop_at.label if prefix.stop_at else '?'}: run it through")
        hidden = self._suffixes(prefix, ids, mask, None)
        n = hidden.shape[0]
        before = torch.cat([prefix.last_hidden.to(hidden.device).expand(n, 1, -1), hidden[:, :-1]], dim=1)
        real = mask.to(hidden.device).bool()
        if scored is not None:
            real = real & scored.to(hidden.device).bool()
        logits = self.head_logits(before[real])  # (real tokens, vocab)
        picked = logits.log_softmax(-1).gather(-1, ids.to(logits.device)[real.to(logits.device)][:, None])[:, 0]
        out = torch.zeros(real.shape, dtype=torch.float32, device=logits.device)
        real = real.to(logits.device)
        out[real] = picked
        return out, real

    def head_logits(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 LM-head logits of final-norm states (..., hidden), for vocabulary ``rows`` only (all when None), with
        the model's bias and final soft-capping; on the head's device."""
        weight, bias = self.head.weight, getattr(self.head, "bias", None)
        hidden = hidden.to(weight.device)
        if rows is None:
            logits = self.head(hidden).float()
        else:
            rows = rows.to(weight.device)
            logits = hidden.float() @ weight[rows].float().T
            if bias is not None:
                logits = logits + bias[rows].float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
