"""Shared pytest fixtures for twinflow-min.

Tests run on CPU, in float64 where they pin math. Data under ../shared (real CIFAR-10 JPEG archives)
is only there on the developers' machines: tests that use it skip with a reason elsewhere.
"""

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
if str(REPO_ROOT) not in sys.path:  # train.py / sample.py are importable with plain `pytest` too
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep the suite predictable on the 2-core CI machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def shared_data_dir() -> Path:
    """../shared/data when present (developer machines), else skip the test with a reason."""
    path = SHARED_DIR / "data"
    if not path.is_dir():
        pytest.skip(f"{path} is not present (only developer checkouts have ../shared/data)")
    return path
