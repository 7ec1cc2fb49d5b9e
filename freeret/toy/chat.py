"""The reference rendering of one user turn by a processor's own chat template: the toy models' checks hold the
library's prompt building (:meth:`freeret.backbone.families.Family.render`) and the processors to the plain
transformers call."""

from __future__ import annotations

from transformers import ProcessorMixin

from freeret.backbone.processors import IMAGE_TOKEN_CONTENT


def render_chat(processor: ProcessorMixin, text: str, n_images: int) -> str:
    """One user turn with ``n_images`` images before ``text``, rendered by the processor's chat template."""
    content: list[dict[str, str]] = [dict(IMAGE_TOKEN_CONTENT) for _ in range(n_images)]
    content.append({"type": "text", "text": text})
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
