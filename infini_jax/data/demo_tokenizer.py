"""A tiny byte-level tokenizer shipped with the package for demos and tests.

Every UTF-8 byte is exactly one token (so every digit of a pass key is one token), plus the four
Llama-style special tokens. Ids:

    0 ``<unk>``   1 ``<s>`` (BOS)   2 ``</s>`` (EOS)   3 ``<pad>``   4 + b  byte ``b`` (0..255)

Encoding prepends ``<s>`` like Llama-3's ``<|begin_of_text|>``; decoding with
``skip_special_tokens=True`` round-trips any text exactly. The built tokenizer is saved as a
``PreTrainedTokenizerFast`` so ``AutoTokenizer.from_pretrained(DEMO_TOKENIZER_PATH)`` works offline.

Rebuild the shipped copy with ``python -m infini_jax.data.demo_tokenizer``.
"""

from __future__ import annotations

import json
import os
import sys

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
NUM_SPECIAL = len(SPECIAL_TOKENS)
DEMO_VOCAB_SIZE = NUM_SPECIAL + 256

DEMO_TOKENIZER_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo_tokenizer"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (the alphabet of the ByteLevel pre-tokenizer)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes, strict=True)}


def build_byte_tokenizer(out_dir: str | os.PathLike):
    """Builds the byte-level tokenizer and saves it into ``out_dir`` (created if needed).

    Returns the ``PreTrainedTokenizerFast``; ``AutoTokenizer.from_pretrained(out_dir)`` reloads it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b, ch in sorted(_bytes_to_unicode().items()):
        vocab[ch] = NUM_SPECIAL + b
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    # transformers 5 writes its new class name; the old alias loads under both 4.x and 5.x.
    config_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    return fast


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else DEMO_TOKENIZER_PATH
    build_byte_tokenizer(target)
    print(f"Saved the demo byte tokenizer to {target}")
