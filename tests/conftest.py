import os

import pytest
import torch

# Deterministic hypothesis profile for CI: bounded examples, no deadline (CPU speed varies).
try:
    from hypothesis import settings

    settings.register_profile("ci", deadline=None, max_examples=25, derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover
    pass


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
