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
- Segments (:meth:`SharedPrefix.run_segments`): many rows' own tokens run once after a common prefix (or from the
  start) with their keys and values kept per row (:class:`Segment`); a later suffix batch can then give each row a
  different segment (``segments=``: a query's prompt, a candidate's prompt), stacked right-padded between the common
  prefix and the suffix (masked), with each row's positions continuing its own segment. Stage 2 packs pairs of many
  queries into one forward this way (``freeret/rerank/packing.py``).
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
from transformers.cache_utils import CacheLayerMixin, DynamicLayer

from freeret.backbone.capture import capture, run_until_captured
from freeret.backbone.families import Family, PrefixPositions, family_of
from freeret.embed.layers import LayerSpec


def splits_exactly(tokenizer: Any, prefix: str, suffix: str, whole: str) -> bool:
    """Whether tokenising ``prefix`` and ``suffix`` apart gives ``whole``'s ids: the shared-prefix path scores the
    same tokens as one forward over the whole prompt only then (a split inside a word merges differently)."""
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return ids(prefix) + ids(suffix) == ids(whole)


HEAD_ELEMENTS = 2**27  # fp32 logits computed at once by token_logprobs (512 MiB): a packed batch's scored tokens x vocabulary


def padded(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (ids, mask) of token-id lists."""
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


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


@dataclass
class Segment:
    """One row's own tokens run once after a common prefix (:meth:`SharedPrefix.run_segments`): each layer's keys and
    values of its real tokens, (1, kv heads, length, head dim) on that layer's device (None for a layer the prefix
    never reached), and its last token's final state (predicts the first token after it)."""

    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]
    length: int
    last_hidden: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Bytes its tensors hold (what a segment cache counts)."""
        tensors = [t for t in (*self.keys, *self.values) if t is not None] + [self.last_hidden]
        return sum(t.numel() * t.element_size() for t in tensors)


class _RecordingView(_PrefixView):
    """A prefix view that also keeps the batch's own new keys and values (a segment run)."""

    def __init__(self, source: CacheLayerMixin, n: int) -> None:
        super().__init__(source, n)
        self.new: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        self.new = (key_states, value_states)
        return super().update(key_states, value_states, *args, **kwargs)


class _StackedView(CacheLayerMixin):
    """One layer's read-only context for a batch whose rows have different segments: the common prefix (expanded)
    then each row's segment right-padded to the longest (masked by the caller). The stacked tensor is built when the
    layer runs and dropped after it, so a batch holds one layer's stacked context at a time."""

    is_sliding = False

    def __init__(self, prefix: tuple[torch.Tensor, torch.Tensor] | None, keys: Sequence[torch.Tensor],
                 values: Sequence[torch.Tensor], longest: int) -> None:
        super().__init__()
        self.prefix, self.parts, self.longest, self.is_initialized = prefix, (keys, values), longest, True
        self.length = longest + (prefix[0].shape[-2] if prefix is not None else 0)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("a stacked view is built filled")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        held = (None, None) if self.prefix is None else self.prefix
        return tuple(torch.cat([_stack(pre, parts, self.longest, new), new], dim=-2)
                     for pre, parts, new in zip(held, self.parts, (key_states, value_states)))

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1


def _stack(prefix_states: torch.Tensor | None, parts: Sequence[torch.Tensor], width: int,
           like: torch.Tensor) -> torch.Tensor:
    """(n, heads, prefix + width, dim) on ``like``'s device and dtype: the common prefix's states (expanded, if any)
    then each row's segment states (1, heads, length, dim), zero-padded to ``width``."""
    rows = like.new_zeros(len(parts), parts[0].shape[1], width, parts[0].shape[3])
    for i, t in enumerate(parts):
        rows[i, :, : t.shape[2]] = t[0]
    if prefix_states is None:
        return rows
    return torch.cat([prefix_states.to(rows.device, rows.dtype).expand(len(parts), *prefix_states.shape[1:]), rows], dim=-2)


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
        sliding = "sliding_attention" in (getattr(self.config, "layer_types", None) or ()) or \
            bool(getattr(self.config, "use_sliding_window", False))
        # rows with segments hold padding inside their context: exact only while a sliding window spans all of it
        self.window: int | None = getattr(self.config, "sliding_window", None) if sliding else None

    def new_cache(self) -> DynamicCache:
        """An empty cache with one layer per decoder layer, each keeping all its keys: a sliding-window layer would
        keep only its window, but rows that read a prefix after other tokens (segments) need all of it (the attention
        mask applies the window)."""
        cache = DynamicCache(config=self.config)
        if self.window is not None:
            cache.layers = [DynamicLayer() for _ in cache.layers]
        return cache

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
        cache = self.new_cache()
        last = None
        if stop_at is None:
            last = self.base(**inputs, past_key_values=cache, use_cache=True).last_hidden_state[0, -1]
        else:
            with self._capture([stop_at]):  # layers past the point are never needed
                run_until_captured(self.base, **inputs, past_key_values=cache, use_cache=True)
        return Prefix(cache, int(ids.shape[1]), positions, stop_at, last)

    def empty_prefix(self) -> Prefix:
        """A prefix of no tokens: segments run from the start after it (their ids begin as the model's inputs do)."""
        return Prefix(self.new_cache(), 0, PrefixPositions(None, 0), None, None)

    def fits(self, prefix: Prefix, context: int, width: int) -> bool:
        """Whether a batch with segments of up to ``context`` tokens and suffixes of ``width`` tokens after ``prefix``
        is exact on this model with rows of unequal segments (a sliding window must span it all: the padding inside
        counts); a lone row always is (its context holds no padding)."""
        return self.window is None or prefix.length + context + width <= self.window

    @torch.no_grad()
    def run_segments(self, prefix: Prefix, rows: Sequence[Sequence[int]]) -> list[Segment]:
        """Run right-padded token rows after ``prefix`` (through the final norm) and keep each row's own keys and
        values and last state: the :class:`Segment` that later suffixes read (``segments=``)."""
        if prefix.stop_at is not None:
            raise ValueError(f"this prefix stopped at {prefix.stop_at.label}: segments need it run through")
        ids, mask = padded(rows)
        n, width = ids.shape
        device = self.input_device
        views = [_RecordingView(layer, n) for layer in prefix.cache.layers]
        hidden = self.base(input_ids=ids.to(device), attention_mask=torch.cat([mask.new_ones(n, prefix.length), mask],
                           dim=1).to(device), position_ids=prefix.positions.suffix(n, width, device),
                           past_key_values=Cache(layers=views), use_cache=True).last_hidden_state
        out = []
        for i, length in enumerate(mask.sum(1).tolist()):
            kv = [(v.new[0][i : i + 1, :, :length].clone(), v.new[1][i : i + 1, :, :length].clone())
                  if v.new is not None else (None, None) for v in views]
            out.append(Segment([k for k, _ in kv], [v for _, v in kv], length, hidden[i, length - 1].clone()))
        return out

    def _stacked(self, prefix: Prefix, segments: Sequence[Segment], mask: torch.Tensor,
                 device: torch.device) -> tuple[Cache, torch.Tensor, torch.Tensor]:
        """The cache of a batch whose row i reads ``segments[i]`` after the common prefix, its full attention mask
        and the first position of each row's suffix."""
        n, width = mask.shape
        if len(segments) != n:
            raise ValueError(f"{len(segments)} segments for {n} rows")
        lengths = torch.tensor([s.length for s in segments])
        longest = int(lengths.max())
        if int(lengths.min()) < longest and not self.fits(prefix, longest, width):
            raise ValueError(f"{prefix.length} + {longest} + {width} tokens exceed this model's sliding window "
                             f"({self.window}): run these rows without segments")
        layers: list[CacheLayerMixin] = []
        for i, layer in enumerate(prefix.cache.layers):
            keys, values = [s.keys[i] for s in segments], [s.values[i] for s in segments]
            if any(k is None for k in keys):
                raise ValueError("a segment that stopped early cannot serve a forward through the final norm")
            held = layer.is_initialized and layer.keys.numel() > 0
            layers.append(_StackedView((layer.keys, layer.values) if held else None, keys, values, longest))
        context = (torch.arange(longest)[None, :] < lengths[:, None]).to(mask.dtype)
        full = torch.cat([mask.new_ones(n, prefix.length), context, mask], dim=1).to(device)
        return Cache(layers=layers), full, (prefix.positions.next + lengths).to(device)

    def _suffixes(self, prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor, spec: LayerSpec | None) -> torch.Tensor:
        """(n, width, hidden) states of right-padded suffixes after ``prefix``: at ``spec``, or after the final norm."""
        if spec is None:
            return self._suffix_states(prefix, ids, mask, None)
        return self._suffix_states(prefix, ids, mask, (spec,))[spec]

    def _suffix_states(self, prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor,
                       specs: Sequence[LayerSpec] | None, segments: Sequence[Segment] | None = None) -> Any:
        """The suffixes' (n, width, hidden) states at each of ``specs`` (a dict; the forward stops after the deepest),
        or after the final norm (one tensor) when ``specs`` is None. With ``segments``, row i reads ``segments[i]``
        between the prefix and its suffix."""
        if specs is None and prefix.stop_at is not None:
            raise ValueError(f"this prefix stopped at {prefix.stop_at.label}: run it through for logits")
        n_layers = len(self.layers)
        for spec in specs or ():
            if prefix.stop_at is not None and spec.order(n_layers) > prefix.stop_at.order(n_layers):
                raise ValueError(f"this prefix stopped at {prefix.stop_at.label}, before {spec.label}")
        device = self.input_device
        ids, mask = ids.to(device), mask.to(device)
        n, width = ids.shape
        if segments is None:
            kwargs = {"input_ids": ids, "attention_mask": torch.cat([mask.new_ones(n, prefix.length), mask], dim=1),
                      "position_ids": prefix.positions.suffix(n, width, device), "past_key_values": prefix.view(n),
                      "use_cache": True}
        else:
            cache, full, starts = self._stacked(prefix, segments, mask, device)
            positions = starts[:, None] + torch.arange(width, device=device)
            if prefix.positions.axes > 1:
                positions = positions.unsqueeze(0).expand(prefix.positions.axes, n, width)
            kwargs = {"input_ids": ids, "attention_mask": full, "position_ids": positions, "past_key_values": cache,
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
                    rows: torch.Tensor | None = None, segments: Sequence[Segment] | None = None) -> torch.Tensor:
        """(n, rows) fp32 logits at each suffix's last real token, for vocabulary ``rows`` only (all when None); with
        ``segments``, row i reads ``segments[i]`` after the prefix."""
        return self.head_logits(self._at_last(self._suffix_states(prefix, ids, mask, None, segments), mask), rows)

    @torch.no_grad()
    def token_logprobs(self, prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor,
                       scored: torch.Tensor | None = None,
                       segments: Sequence[Segment] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log P(suffix token j | prefix, suffix tokens before j), fp32 (n, width), 0 at padding; and the (n, width)
        bool mask of the tokens read (real, and ``scored``). The LM head and the log-softmax over the vocabulary run at
        real suffix tokens only, or only where ``scored`` (an (n, width) bool mask within the real tokens) is true: the
        rest read 0. With ``segments``, row i reads ``segments[i]`` after the prefix (its last state predicts token 0)."""
        if segments is None and prefix.last_hidden is None:
            raise ValueError(f"this prefix stopped at {prefix.stop_at.label if prefix.stop_at else '?'}: run it through")
        hidden = self._suffix_states(prefix, ids, mask, None, segments)
        n = hidden.shape[0]
        if segments is None:
            first = prefix.last_hidden.to(hidden.device).expand(n, 1, -1)
        else:
            first = torch.stack([s.last_hidden.to(hidden.device) for s in segments])[:, None]
        before = torch.cat([first.to(hidden.dtype), hidden[:, :-1]], dim=1)
        real = mask.to(hidden.device).bool()
        if scored is not None:
            real = real & scored.to(hidden.device).bool()
        states, targets = before[real], ids.to(hidden.device)[real]
        chunk = max(1, HEAD_ELEMENTS // max(1, self.head.weight.shape[0]))  # rows of full-vocabulary logits at once
        picked = torch.cat([self.head_logits(states[i : i + chunk]).log_softmax(-1).gather(
            -1, targets[i : i + chunk].to(self.head.weight.device)[:, None])[:, 0] for i in range(0, len(states), chunk)]
            or [torch.zeros(0, device=self.head.weight.device)])
        out = torch.zeros(real.shape, dtype=torch.float32, device=picked.device)
        real = real.to(picked.device)
        out[real] = picked
        return out, real

    @torch.no_grad()
    def rows_logprobs(self, prefix: Prefix, rows: Sequence[Sequence[int]], scored: Sequence[int],
                      segments: Sequence[Segment] | None = None) -> list[torch.Tensor]:
        """Token-id rows right-padded into one forward after ``prefix`` (row i after ``segments[i]`` if given): per
        row, the host fp32 log-probabilities of its last ``scored[i]`` tokens (the LM head there only)."""
        ids, mask = padded(rows)
        cols = torch.arange(ids.shape[1])
        picked = torch.stack([(cols >= len(r) - k) & (cols < len(r)) for r, k in zip(rows, scored)])
        logprobs = self.token_logprobs(prefix, ids, mask, picked, segments)[0].to("cpu", torch.float32)
        return [logprobs[i, len(r) - k : len(r)] for i, (r, k) in enumerate(zip(rows, scored))]

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
