"""The per-image stages' frame (affext.stages.runner.ImageStage): checks, folders, record,
pending ids, loader and progress bar."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import small_voc

from affext.data import DatasetError, VOCDataset, read_id_list
from affext.records import ConfigChangedError
from affext.stages.runner import CamImages, ImageStage


@dataclass
class _Config:
    alpha: float = 1.0
    num_workers: int = 2
    device: str = "cpu"


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return small_voc(tmp_path_factory.mktemp("voc"), 3, 1, seed=2)


@pytest.fixture(scope="module")
def ids(voc) -> list[str]:
    return read_id_list(voc / "ImageSets/Segmentation/trainval.txt")


def test_an_unknown_id_or_missing_input_is_refused_before_any_folder(voc, ids, tmp_path):
    data = VOCDataset(voc)
    with pytest.raises(DatasetError, match="nope"):
        ImageStage("s", _Config(), data, [*ids, "nope"], tmp_path / "a", ["x/{}.npy"])
    seen = []

    def inputs(checked):
        seen.append(checked)
        raise FileNotFoundError("no inputs")

    with pytest.raises(FileNotFoundError, match="no inputs"):
        ImageStage("s", _Config(), data, ids, tmp_path / "b", ["x/{}.npy"], inputs=inputs)
    assert seen == [ids]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_pending_ids_record_loader_and_bar(voc, ids, tmp_path):
    data = VOCDataset(voc)
    run = ImageStage("s", _Config(), data, ids, tmp_path, ["x/{}.npy", "y/{}.png"], desc="d")
    assert (tmp_path / "x").is_dir() and (tmp_path / "y").is_dir()
    (tmp_path / "x" / f"{ids[0]}.npy").write_bytes(b"")
    (tmp_path / "y" / f"{ids[0]}.png").write_bytes(b"")
    (tmp_path / "x" / f"{ids[1]}.npy").write_bytes(b"")  # half done: still pending
    assert run.start() == ids[1:]
    assert json.loads((tmp_path / "s.config.json").read_text())["config"]["alpha"] == 1.0
    assert run.loader(list(range(2)), batch_size=None).num_workers == 2
    bar = run.bar(False)
    assert (bar.total, bar.n, run.desc) == (len(ids), 1, "d")
    bar.close()
    assert run.start(overwrite=True) == ids
    # another setting over the outputs: refused, unless overwrite or check=False
    other = ImageStage("s", _Config(alpha=2.0), data, ids[:1], tmp_path, ["x/{}.npy"])
    with pytest.raises(ConfigChangedError, match="alpha"):
        other.start()
    assert other.start(check=False) == []
    assert other.loader(list(range(1)), batch_size=None).num_workers == 0  # nothing to share


def test_cam_images_serve_their_items_by_id(voc, ids, tmp_path):
    class Named(CamImages):
        def item(self, image_id):
            return image_id, self.cam_dir

    items = Named(VOCDataset(voc), ids, str(tmp_path))
    assert len(items) == len(ids) and items[1] == (ids[1], tmp_path)
