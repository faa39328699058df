"""Test helpers: tiny IDX files in Fashion-MNIST's layout."""

import gzip
import struct

import torch


def write_idx(path, tensor, type_byte=0x08, compress=False, extra=b""):
    """A plain IDX writer for the tests (big-endian data after the header)."""
    fmt = {0x08: "B", 0x0B: "h", 0x0C: "i"}[type_byte]
    header = bytes([0, 0, type_byte, tensor.dim()]) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    data = struct.pack(f">{tensor.numel()}{fmt}", *tensor.flatten().tolist())
    raw = header + data + extra
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_fashion(directory, n_train=12, n_test=5, label_max=9, compress=True):
    g = torch.Generator().manual_seed(0)
    sfx = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, label_max + 1, (n,), generator=g, dtype=torch.uint8)
        labels[0] = label_max
        write_idx(directory / f"{prefix}-images-idx3-ubyte{sfx}", imgs, compress=compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{sfx}", labels, compress=compress)
    return imgs, labels
