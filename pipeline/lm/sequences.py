"""The token sequences the teacher sees: chat template, where the response starts, the length limit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import polars as pl

from pipeline.errors import PipelineError

TOO_LONG = ("refuse", "truncate")
Encoded = tuple[list[int], int]  # token ids, index of the first response token


def encode_prompt(tokenizer: Any, prompt: str, use_chat_template: bool) -> list[int]:
    if use_chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def encode_conversation(tokenizer: Any, prompt: str, response: str, use_chat_template: bool) -> Encoded:
    """Token ids of prompt + response and where the response starts."""
    prompt_ids = encode_prompt(tokenizer, prompt, use_chat_template)
    if not use_chat_template:
        return prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"], len(prompt_ids)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    full = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    if full[: len(prompt_ids)] != prompt_ids:
        raise PipelineError("the chat template renders the prompt differently with and without the response; set teacher.chat_template: false")
    return full, len(prompt_ids)


def encode_row(tokenizer: Any, prompt: str, response: str | None, use_chat_template: bool) -> Encoded:
    """(ids, response start) of one row; a prompt still to be answered (response None) starts its response at len(ids)."""
    if response is not None:
        return encode_conversation(tokenizer, prompt, response, use_chat_template)
    ids = encode_prompt(tokenizer, prompt, use_chat_template)
    return ids, len(ids)


def encode_rows(tokenizer: Any, rows: pl.DataFrame, use_chat_template: bool, limit: int | None = None) -> list[Encoded]:
    """One (ids, response start) per row; with `limit`, a row longer than it is fitted to it (`fit`)."""
    responses = rows["response"] if "response" in rows.columns else [None] * rows.height
    if limit is None:
        return [encode_row(tokenizer, p, r, use_chat_template) for p, r in zip(rows["prompt"], responses)]
    return [fit(tokenizer, p, r, use_chat_template, limit) for p, r in zip(rows["prompt"], responses)]


def fit(tokenizer: Any, prompt: str, response: str | None, use_chat_template: bool, limit: int) -> Encoded:
    """The row's ids within `limit` tokens (teacher.too_long: truncate), the chat template kept whole.

    A prompt keeps as much as fits (leaving one token for a scored response); a prompt over that is
    shortened in its user text, so the template's markers (the assistant turn above all) stay where
    the teacher expects them. Without a chat template the prompt keeps its first tokens. A scored
    response longer than the room left is cut at its end.
    """
    encoded = encode_row(tokenizer, prompt, response, use_chat_template)
    if len(encoded[0]) <= limit:
        return encoded
    room = limit if response is None else limit - 1
    if encoded[1] > room:
        if not use_chat_template:
            return truncate(encoded, limit)
        encoded = encode_row(tokenizer, shortened_prompt(tokenizer, prompt, room), response, use_chat_template)
    ids, start = encoded
    return ids[:limit], start


def shortened_prompt(tokenizer: Any, prompt: str, room: int) -> str:
    """The longest start of `prompt` (whole tokens of it) whose chat-template rendering fits in `room` tokens."""
    user_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def start(keep: int) -> str:
        return tokenizer.decode(user_ids[:keep]).rstrip("\ufffd")  # a cut through a character decodes to U+FFFD

    keep = len(user_ids) - (len(encode_prompt(tokenizer, prompt, True)) - room)
    while keep > 0:
        excess = len(encode_prompt(tokenizer, start(keep), True)) - room
        if excess <= 0:
            while keep < len(user_ids) and len(encode_prompt(tokenizer, start(keep + 1), True)) <= room:
                keep += 1  # re-encoding can merge across the cut: take back what still fits
            return start(keep)
        keep -= excess
    overhead = len(encode_prompt(tokenizer, "", True))
    raise PipelineError(f"the chat template alone takes {overhead} tokens, more than the {room} a prompt may have: raise the teacher's length limit, or set teacher.chat_template: false")


def length_limit(max_length: int, max_new_tokens: int, scoring: bool) -> int:
    """Longest sequence given to the teacher: generation must leave room for the answer."""
    if scoring:
        return max_length
    if max_new_tokens >= max_length:
        raise PipelineError(f"generation.max_new_tokens={max_new_tokens} leaves no room for a prompt within the teacher's max length of {max_length} tokens")
    return max_length - max_new_tokens


def truncate(encoded: Encoded, limit: int) -> Encoded:
    """Keep the first tokens that fit; a scored response keeps at least its first token."""
    ids, start = encoded
    if len(ids) <= limit:
        return encoded
    if start >= len(ids):
        return ids[:limit], limit
    kept_prompt = min(start, limit - 1)
    return (ids[:kept_prompt] + ids[start:])[:limit], kept_prompt


def refuse_too_long(batches: Iterable[tuple[pl.Series, list[Encoded]]], limit: int, too_long: str) -> int:
    """Count sequences over the limit before any teacher work; under 'refuse' name the first and stop."""
    if too_long not in TOO_LONG:
        raise PipelineError(f"teacher.too_long must be one of {', '.join(TOO_LONG)}, got '{too_long}'")
    count, first = 0, None
    for ids, encoded in batches:
        for row_id, (tokens, _) in zip(ids, encoded):
            if len(tokens) > limit:
                count += 1
                first = first or (row_id, len(tokens))
    if count and too_long == "refuse":
        raise PipelineError(f"{count} prompt(s) are longer than the teacher's limit of {limit} tokens, first '{first[0]}' ({first[1]} tokens); shorten them or set teacher.too_long: truncate")
    return count
