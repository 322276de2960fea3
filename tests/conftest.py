import os

import pytest
import torch

# Triton kernels run in its interpreter on machines without a GPU. Triton reads this when a kernel is
# decorated, so it has to be set before any test imports tameshi.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
