"""Backbones: load an LM or MLLM, render its prompts, read its sub-layer states."""

from freeret.backbone.backbone import Backbone
from freeret.backbone.loading import load_backbone
from freeret.backbone.spec import ModelSpec

__all__ = ["Backbone", "ModelSpec", "load_backbone"]
