import os

import pytest
import torch

# Hypothesis profile for CI: bounded examples, no deadline (CPU speed varies); the examples are
# drawn afresh each run, so a run can meet a case no earlier run met.
try:
    from hypothesis import settings

    settings.register_profile("ci", deadline=None, max_examples=25, derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover
    pass


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    # TRITON_INTERPRET=1 TOKENDYN_TEST_DEVICE=cpu: the Triton kernels' tests run in Triton's
    # interpreter on the CPU (slow; checks kernel logic without a GPU)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("TOKENDYN_TEST_DEVICE") == "cpu"
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not (interpreted and "interpretable" in item.keywords):
            item.add_marker(skip)
