"""Evaluation data: tokenizers, haystacks, generated passkey prompts and nanotron's HF datasets.

* ``tokenizer``: ``load_tokenizer`` / ``check_vocab``;
* ``demo_tokenizer``: the tiny byte-level tokenizer shipped in ``infini_jax/assets/demo_tokenizer``;
* ``haystack``: built-in filler text and ``load_haystack`` for your own ``*.txt`` files;
* ``prompts``: ``PromptSample`` and the token-exact prompt generator (nanotron's generate_data.py);
* ``datasets``: local / hub parquet datasets and nanotron-compatible sample selection.
"""
