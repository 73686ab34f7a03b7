"""Atomic writes: a failed write leaves the previous file intact and no temporary files behind."""

from __future__ import annotations

import stat

import pytest
import torch

from mtransfer.errors import MtransferError
from mtransfer.files import atomic_path, load_image, read_json, save_image, write_json


def test_failed_write_keeps_the_old_file(tmp_path):
    target = write_json(tmp_path / "record.json", {"frames": 3})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{half a reco")
            raise RuntimeError("killed mid-write")
    assert read_json(target) == {"frames": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_written_files_are_world_readable_and_images_round_trip(tmp_path):
    image = torch.rand(3, 10, 14)
    path = save_image(tmp_path / "x.png", image)
    assert path.stat().st_mode & stat.S_IROTH
    assert torch.allclose(load_image(path), image, atol=1 / 255)


def test_unreadable_inputs_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(MtransferError, match="bad.png: not a readable image"):
        load_image(bad)
    with pytest.raises(MtransferError, match="missing.json: no such JSON file"):
        read_json(tmp_path / "missing.json")


def test_write_json_writes_non_finite_numbers_one_way_that_strict_json_reads(tmp_path) -> None:
    """Infinity as "inf" (an identical picture's PSNR), NaN as null: never the NaN/Infinity tokens that
    strict JSON readers (browsers, jq) refuse; ``with_infinities`` restores the infinities."""
    import json
    import math

    from mtransfer.files import with_infinities

    path = write_json(tmp_path / "r.json", {"psnr": math.inf, "loss": math.nan, "rows": [{"low": -math.inf, "x": 1.5}]})

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    strict = json.loads(path.read_text(), parse_constant=refuse)
    assert strict == {"psnr": "inf", "loss": None, "rows": [{"low": "-inf", "x": 1.5}]}
    assert with_infinities(read_json(path)) == {"psnr": math.inf, "loss": None, "rows": [{"low": -math.inf, "x": 1.5}]}
