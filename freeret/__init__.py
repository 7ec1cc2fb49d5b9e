"""FreeRet: any (multimodal) LLM as a training-free two-stage retriever."""

__version__ = "0.1.0"
