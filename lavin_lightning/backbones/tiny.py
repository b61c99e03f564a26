"""Tiny, offline stand-ins for tests and CPU smoke runs.

The tokenizer is byte-level BPE with no merges: every UTF-8 byte is a token, so it
needs no training data, encodes any text, and is identical on every machine.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2; bytes follow


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A 259-token byte-level tokenizer with pad/bos/eos (ids 0/1/2)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


TINY_VOCAB_SIZE = 259
