"""Option tokens: the token id of each option label where it follows the answer cue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from freeret.errors import ConfigError


def option_text(context: str, option: str) -> str:
    """How the option is written after ``context``: bare after whitespace, else with a leading space."""
    return option if not context or context[-1].isspace() else " " + option


def resolve_option_ids(tokenizer: Any, context: str, options: Sequence[str], framing: str = "framing") -> list[int]:
    """One token id per option, read from tokenising ``context + option``.

    Refuses (ConfigError) options that are not a single token in that context, or that
    share an id: their probabilities could not be compared at one position.
    """
    base = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = []
    for option in options:
        full = tokenizer(context + option_text(context, option), add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) != len(base) + 1:
            pieces = tokenizer.convert_ids_to_tokens(full[len(base) :]) if full[: len(base)] == base else "?"
            raise ConfigError(
                f"{framing}: option {option!r} is not a single token after the answer cue ({pieces}); "
                f"use single-token labels such as A/B or Yes/No"
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{framing}: options {list(options)} map to the same token id(s) {ids}")
    return ids
