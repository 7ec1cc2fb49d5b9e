"""Adapters that expose FreeRet to other evaluation frameworks."""
