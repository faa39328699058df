"""Input data: text corpora and tokenizers (``text``), image data sets (``images``)."""

from .images import ImageDataset, ImageSplit, ImageTransform, load_fashion_mnist, load_image_folder, load_images
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

__all__ = ["ImageDataset", "ImageSplit", "ImageTransform", "load_fashion_mnist", "load_image_folder", "load_images",
           "bible_text", "bible_verses", "byte_tokens", "encode", "encode_prefix", "find_tokenizer",
           "load_tokenizer", "read_text_file", "strip_verse_reference"]
