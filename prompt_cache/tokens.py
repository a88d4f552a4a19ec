"""The 77-token CLIP budget, measured with the real open_clip tokenizer."""

from __future__ import annotations

import functools

CONTEXT_LENGTH = 77
_TEXT_TOKENS = CONTEXT_LENGTH - 2  # the start and end-of-text markers take two of the 77 slots


@functools.cache
def _tokenizer():
    import open_clip  # imported lazily: it pulls in torch and takes a second

    return open_clip.get_tokenizer("ViT-B-16")


@functools.lru_cache(maxsize=1 << 16)  # bank sentences and templates recur in every build
def token_count(text: str) -> int:
    """CLIP tokens of `text`, counting the start and end markers, i.e. the slots it takes of the 77."""
    return len(_tokenizer().encode(text)) + 2


def fits(text: str) -> bool:
    return token_count(text) <= CONTEXT_LENGTH


def truncate(text: str) -> str:
    """`text` cut at a word boundary so that it fits the 77-token context; unchanged when it already fits."""
    if fits(text):
        return text
    tokenizer = _tokenizer()
    kept: list[str] = []
    used = 0
    # The tokenizer never merges across whitespace, so per-word counts add up to the sentence's count.
    for word in text.split():
        used += len(tokenizer.encode(word))
        if used > _TEXT_TOKENS:
            break
        kept.append(word)
    if not kept:  # a single enormous "word": cut the token ids themselves
        return tokenizer.decode(tokenizer.encode(text)[:_TEXT_TOKENS]).strip()
    return " ".join(kept).rstrip(",;:")
