"""A loaded model with its processor: renders prompts, batches inputs, reads sub-layer states."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import nn

from freeret.backbone.capture import capture, run_until_captured, token_prepending
from freeret.backbone.families import IMAGE, Family
from freeret.backbone.spec import ModelSpec
from freeret.embed.layers import LayerSpec, Readout

if TYPE_CHECKING:
    from freeret.backbone.prefix import PrefixCache

FINAL = LayerSpec("final_norm", -1)  # PromptReps reads the final norm's output at the last token


@dataclass(frozen=True)
class Prompter:
    """Prompt rendering and input batching without the weights: what DataLoader workers hold (and pickle)."""

    spec: ModelSpec
    family: Family
    processor: Any

    def render(self, text: str, n_images: int = 0) -> str:
        """The full prompt (chat template applied) for images followed by text; its last token is pooled."""
        return self.render_parts([IMAGE] * n_images + [text])

    def render_parts(self, parts: Sequence[Any]) -> str:
        """The full prompt for interleaved texts and ``IMAGE`` slots."""
        return self.family.render(self.processor, parts, self.spec.chat_template, self.spec.system_prompt)

    def inputs(self, prompts: list[str], images: list[list[Image.Image]] | None = None) -> dict[str, torch.Tensor]:
        """Left-padded model inputs (host tensors) for a batch of rendered prompts."""
        return self.family.inputs(self.processor, prompts, images)


@dataclass
class Backbone:
    """The frozen MLLM/LM that both stages share."""

    spec: ModelSpec
    family: Family
    model: nn.Module
    processor: Any
    tokenizer: Any
    revision: str | None = None
    checkpoint_dir: str | None = None  # the local folder the weights loaded from (for hub ids, the HF cache snapshot)
    layers: nn.ModuleList = field(init=False)
    final_norm: nn.Module = field(init=False)

    def __post_init__(self) -> None:
        _, self.layers, self.final_norm = self.family.decoder_parts(self.model)

    @property
    def num_layers(self) -> int:
        """Number of decoder layers of the language model."""
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        """Where inputs go (the first weights' device; with a device map, accelerate moves activations on)."""
        return next(self.model.parameters()).device

    @property
    def prompter(self) -> Prompter:
        """Rendering and batching without the weights (DataLoader workers get this, not the model)."""
        return Prompter(self.spec, self.family, self.processor)

    @property
    def image_processor(self) -> tuple[str | None, str | None]:
        """(class name, backend "pil" or "torchvision") of the image processing that runs; (None, None) for text."""
        images = getattr(self.processor, "image_processor", None)
        if images is None:
            return None, None
        bases = {c.__name__ for c in type(images).__mro__}
        return type(images).__name__, "torchvision" if "TorchvisionBackend" in bases else "pil"

    def render(self, text: str, n_images: int = 0) -> str:
        """The full prompt (chat template applied) for images followed by text; its last token is pooled."""
        return self.prompter.render(text, n_images)

    def render_parts(self, parts: Sequence[Any]) -> str:
        """The full prompt for interleaved texts and ``IMAGE`` slots."""
        return self.prompter.render_parts(parts)

    def inputs(self, prompts: list[str], images: list[list[Image.Image]] | None = None) -> dict[str, torch.Tensor]:
        """Left-padded model inputs for a batch of rendered prompts."""
        return self.prompter.inputs(prompts, images)

    def capture(self, specs: Sequence[LayerSpec], stop: bool = True) -> AbstractContextManager[dict[LayerSpec, torch.Tensor]]:
        """Hooks that read ``specs`` during a forward run inside the ``with`` (:func:`~freeret.backbone.capture.capture`
        with this family's attention point)."""
        return capture(self.layers, self.final_norm, specs, stop=stop, attn_point=self.family.attn_point)

    @torch.no_grad()
    def hidden_states(
        self, inputs: dict[str, torch.Tensor], specs: Sequence[LayerSpec], stop: bool = True
    ) -> dict[LayerSpec, torch.Tensor]:
        """(batch, seq, hidden) states at each requested point; the forward stops after the deepest."""
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with self.capture(specs, stop=stop) as captured:
            run_until_captured(self.model, **inputs, use_cache=False, logits_to_keep=1)
        return captured

    def embed(self, inputs: dict[str, torch.Tensor], spec: LayerSpec | Readout, prefix: PrefixCache | None = None,
              content: torch.Tensor | None = None, slot: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings (batch, hidden) in fp32; needs left padding. ``spec``: one point read at the last token, or a
        :class:`~freeret.embed.layers.Readout` (several points averaged, another pooling; ``content`` marks each
        item's own tokens for ``pooling=mean``; ``slot``: each row's token-prepending slot, counted from the end).

        With ``prefix``, a text batch runs its shared prompt prefix once from a KV cache (same vectors, fewer tokens;
        not with token prepending, whose slot sits in the prefix). With ``Readout.lexical_k`` (PromptReps) each row is
        ``concat(dense, top-k token ids as floats, their weights)`` from the same forward (:meth:`lexical`).
        """
        readout = Readout.of(spec)
        mask = inputs["attention_mask"]
        if not bool(mask[:, -1].all()):
            raise ValueError("last-token pooling needs left padding: the last position of a row is padding")
        if readout.prepend is not None and slot is None:
            raise ValueError("token prepending needs each row's slot position (PromptCollator with prepend)")
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        points = readout.points
        lexical = readout.lexical_k is not None
        wanted = points + ((FINAL,) if lexical and FINAL not in points else ())
        weights = None if readout.single else readout.pooling.weights(inputs["attention_mask"], content)
        pooled, last_final = None, None
        if prefix is not None and readout.prepend is None and (weights is None or not lexical) and prefix.applies(inputs):
            pooled = prefix.pooled(inputs, wanted, weights)
            last_final = pooled[FINAL] if (pooled is not None and lexical) else None
        if pooled is None:
            with self.prepending(readout, slot):
                states = self.hidden_states(inputs, wanted)
            pooled = {p: states[p][:, -1] if weights is None else
                      torch.einsum("bt,btd->bd", weights.to(states[p].device), states[p].float()) for p in points}
            last_final = states[FINAL][:, -1] if lexical else None
        vectors = []
        for point in points:
            hidden = pooled[point]
            if point.apply_final_norm and point.point != "final_norm":
                hidden = self.final_norm(hidden)
            vectors.append(hidden.float())
        if len(vectors) == 1:
            dense = vectors[0]
        else:
            if readout.normalize_points:
                vectors = [torch.nn.functional.normalize(v, dim=-1) for v in vectors]
            dense = torch.stack([v.to(vectors[0].device) for v in vectors]).mean(0)
        if not lexical:
            return dense
        return torch.cat([dense, self.lexical(last_final, int(readout.lexical_k)).to(dense.device)], dim=-1)

    def prepending(self, readout: Readout, slot: torch.Tensor | None) -> AbstractContextManager[None]:
        """The token-prepending hooks of ``readout`` for a forward run inside the ``with`` (none without prepend)."""
        if readout.prepend is None:
            return nullcontext()
        return token_prepending(self.layers, *readout.prepend.layers(self.num_layers), slot)

    @torch.no_grad()
    def lexical(self, final: torch.Tensor, k: int) -> torch.Tensor:
        """PromptReps (Zhuang et al. 2024, arXiv 2404.18424) from the final-norm state at the last token (batch,
        hidden): logits = LM head (soft-capped where the config says so), weights log1p(relu(logits)), the top ``k``
        as (batch, 2k) fp32 = [token ids, weights]."""
        head = self.model.get_output_embeddings()
        vocab = int(head.weight.shape[0])
        if vocab >= 2**24:
            raise ValueError(f"PromptReps stores token ids as float32: a vocabulary of {vocab} >= 2**24 is not exact")
        logits = head(final.to(head.weight.device, head.weight.dtype))
        text = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        cap = getattr(text, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        if k > vocab:
            raise ValueError(f"retriever.promptreps.k={k} exceeds the vocabulary ({vocab} tokens)")
        values, ids = torch.log1p(torch.relu(logits.float())).topk(k, dim=-1)
        return torch.cat([ids.float(), values], dim=-1)

    def metadata(self) -> dict[str, Any]:
        """What identifies these weights and how they ran, for result files."""
        return {
            "name": self.spec.name,
            "family": self.spec.family,
            "source": self.spec.source,
            "hf_id": self.spec.hf_id,
            "path": self.spec.path,
            "revision": self.revision,
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "device": self.device.type,  # the type only: every DDP rank has the same metadata, hence signatures
            "device_map": self.spec.device_map,
            "image_processor": self.image_processor[0],
            "image_backend": self.image_processor[1],
            "attn_implementation": getattr(self.model.config, "_attn_implementation", self.spec.attn_implementation),
            "num_layers": self.num_layers,
            "hidden_size": int(self.layers[0].self_attn.o_proj.out_features) if hasattr(self.layers[0], "self_attn") else None,
            "min_pixels": self.spec.min_pixels,
            "max_pixels": self.spec.max_pixels,
        }
