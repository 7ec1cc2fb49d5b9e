"""FreeRet embeddings as an mteb encoder (mteb's ``EncoderProtocol``): text and image inputs.

    import mteb
    from freeret.interop.mteb import FreeRetEncoder
    encoder = FreeRetEncoder.from_config(model=..., layer=..., prior=...)   # plain dicts, as in conf/
    mteb.evaluate(encoder, mteb.get_tasks(tasks=["SciFact"]))

Queries are rendered with the prior's query template, corpus documents with its target template;
similarity is cosine in fp32, as in FreeRet's own pipeline. mteb is an optional dependency
(``pip install -e ".[interop]"``): :meth:`FreeRetEncoder.from_config` checks it imports before any weights load.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from freeret.backbone import Backbone, ModelSpec, load_backbone
from freeret.backbone.prefix import PrefixCache
from freeret.embed.layers import LayerSpec
from freeret.embed.priors import Prior
from freeret.optional import require
from freeret.prompts import DatasetPrompt


class FreeRetEncoder:
    """Encodes mteb batches with a FreeRet backbone, sub-layer and prior."""

    def __init__(self, backbone: Backbone, layer: LayerSpec, prior: Prior, prefix_cache: bool = True) -> None:
        self.backbone, self.layer, self.prior = backbone, layer, prior
        self.prefix = PrefixCache(backbone.model) if prefix_cache else None
        self.mteb_model_meta = None  # mteb then names results after the model's class; similarity is ours

    @classmethod
    def from_config(cls, model: Mapping[str, Any], layer: Mapping[str, Any], prior: Mapping[str, Any],
                    dataset: Mapping[str, Any] | None = None) -> FreeRetEncoder:
        """Build from the same mappings as ``conf/model``, ``conf/layer`` and ``conf/prior``; a ``conf/dataset``
        mapping, if given, contributes its prompt facts (``prompt:``). A missing mteb stops here, before the weights
        load."""
        require("mteb", "FreeRetEncoder (freeret.interop.mteb)")
        spec = ModelSpec.from_dict(model)
        bound = Prior.from_dict(prior).for_dataset(DatasetPrompt.from_config(dataset) if dataset else None)
        return cls(load_backbone(spec), LayerSpec.from_dict(layer), bound)

    @staticmethod
    def _role(prompt_type: Any) -> str:
        value = getattr(prompt_type, "value", prompt_type)
        return "query" if value == "query" else "target"

    def _encode_batch(self, batch: Mapping[str, Any], role: str) -> torch.Tensor:
        images = batch.get("image")
        texts = batch.get("text") or [""] * len(images or [])
        if images is not None:
            images = [im if isinstance(im, list) else [im] for im in images]
            images = [[im.convert("RGB") for im in row] for row in images]
        prompts = [
            self.backbone.render(self.prior.render(role, text or "", bool(images and images[i])),
                                 n_images=len(images[i]) if images else 0)
            for i, text in enumerate(texts)
        ]
        return self.backbone.embed(self.backbone.inputs(prompts, images), self.layer, self.prefix).float().cpu()

    def encode(self, inputs: Iterable[Mapping[str, Any]], *, task_metadata: Any = None, hf_split: str = "",
               hf_subset: str = "", prompt_type: Any = None, **kwargs: Any) -> np.ndarray:
        """Embeddings (n x d, fp32) of every item the mteb dataloader yields, in order."""
        role = self._role(prompt_type)
        parts = [self._encode_batch(batch, role) for batch in inputs]
        return torch.cat(parts).numpy() if parts else np.zeros((0, 0), dtype=np.float32)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity matrix in fp32."""
        a = F.normalize(torch.as_tensor(np.asarray(embeddings1), dtype=torch.float32), dim=-1)
        b = F.normalize(torch.as_tensor(np.asarray(embeddings2), dtype=torch.float32), dim=-1)
        return a @ b.T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity of corresponding rows."""
        a = torch.as_tensor(np.asarray(embeddings1), dtype=torch.float32)
        b = torch.as_tensor(np.asarray(embeddings2), dtype=torch.float32)
        return F.cosine_similarity(a, b, dim=-1)
