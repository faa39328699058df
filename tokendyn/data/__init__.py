"""Input data: text corpora and tokenizers (``text``)."""

from .text import (
                   bible_text,
                   bible_verses,
                   byte_tokens,
                   encode,
                   encode_prefix,
                   find_tokenizer,
                   load_tokenizer,
                   read_text_file,
                   strip_verse_reference,
)

__all__ = ["bible_text", "bible_verses", "byte_tokens", "encode", "encode_prefix", "find_tokenizer",
           "load_tokenizer", "read_text_file", "strip_verse_reference"]
