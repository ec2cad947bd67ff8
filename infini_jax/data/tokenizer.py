"""Loading the evaluation tokenizer and checking it against the model's vocabulary.

nanotron's eval scripts use ``lvwerra/the-tokenizer-v1`` (the tokenizer the Infini-Attention
checkpoints were trained with). Offline, pass a local directory holding ``tokenizer.json`` /
``tokenizer_config.json`` instead, e.g. the byte-level demo tokenizer at
``infini_jax.data.demo_tokenizer.DEMO_TOKENIZER_PATH``.
"""

from __future__ import annotations

DEFAULT_TOKENIZER = "lvwerra/the-tokenizer-v1"


def load_tokenizer(name_or_path: str = DEFAULT_TOKENIZER):
    """Loads a Hugging Face tokenizer from a local directory or a hub name (never remote code)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=False)
    except Exception as e:  # transformers raises OSError, ValueError, HFValidationError, ...
        raise ValueError(
            f"Could not load the tokenizer {str(name_or_path)!r} ({type(e).__name__}: {e}). "
            "Pass a local directory containing tokenizer.json / tokenizer_config.json (when offline, "
            "a hub name such as 'lvwerra/the-tokenizer-v1' only works if it is already in the Hugging Face "
            "cache); the byte-level demo tokenizer lives at "
            "infini_jax.data.demo_tokenizer.DEMO_TOKENIZER_PATH."
        ) from e


def tokenizer_num_ids(tokenizer) -> int:
    """Number of ids the tokenizer can emit: ``len(tokenizer)`` (added tokens included) or higher."""
    n = len(tokenizer)
    added = getattr(tokenizer, "get_added_vocab", None)
    if added is not None:
        ids = list(added().values())
        if ids:
            n = max(n, max(ids) + 1)
    return n


def check_vocab(tokenizer, vocab_size: int) -> None:
    """Raises ``ValueError`` when the tokenizer's ids do not fit a model vocabulary of ``vocab_size``."""
    n = tokenizer_num_ids(tokenizer)
    if n > vocab_size:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"The tokenizer {name!r} has {n} ids (added tokens included) but the model's vocab_size is "
            f"{vocab_size}: ids >= {vocab_size} would index past the embedding table. Use the tokenizer the "
            f"model was trained with, or a model whose vocab_size is at least {n}."
        )
