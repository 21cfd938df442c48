"""The shared fixtures (the shared constants and helpers: helpers.py)."""

from pathlib import Path

import pytest
import torch
from helpers import DEVICES

from affext.data import read_id_list


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each device present: "cpu", and "cuda" where torch sees one."""
    return request.param


@pytest.fixture(scope="module")
def ids(voc: Path) -> list[str]:
    """The image ids of the module's own `voc` fixture (its trainval list)."""
    return read_id_list(voc / "ImageSets/Segmentation/trainval.txt")


@pytest.fixture
def interrupted_training(monkeypatch):
    """interrupted_training(train): run train() as if the machine stopped right after its
    first checkpoint was saved (the KeyboardInterrupt it raises is caught); the checkpoints
    are saved as usual afterwards."""
    from affext.stages import training

    real_save = training.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    def run(train):
        monkeypatch.setattr(training, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train()
        monkeypatch.setattr(training, "save_checkpoint", real_save)

    return run
