"""COCO caption reference and result files: image order, checks that name the file and the image."""

from __future__ import annotations

import pytest
from conftest import write_coco_references, write_json

from lavin_lightning.errors import DataError
from lavin_lightning.formats.captions import read_coco_references, read_coco_results


def test_read_references_with_and_without_images(tmp_path):
    # The images list orders the ids (as COCO.getImgIds); an image without captions is left out.
    with_images = read_coco_references(write_coco_references(tmp_path, with_images=True))
    assert list(with_images.items()) == [(3, ["a cat on a sofa"]), (7, ["a dog on the grass", "a brown dog"])]
    without = read_coco_references(write_coco_references(tmp_path, with_images=False))
    assert list(without) == [7, 3] and without[7] == with_images[7]


def test_bad_reference_files_name_the_file_and_image(tmp_path):
    path = write_json(tmp_path / "refs.json", {"annotations": [{"image_id": 5, "id": 1, "caption": 3}]})
    with pytest.raises(DataError, match=r"refs\.json: annotation 0 \(image id 5\) has a int caption"):
        read_coco_references(path)
    path = write_json(tmp_path / "refs.json", [{"image_id": 5, "caption": "a dog"}])
    with pytest.raises(DataError, match=r'refs\.json: no "annotations" list'):
        read_coco_references(path)
    path = write_json(tmp_path / "refs.json", {"annotations": [{"image_id": True, "caption": "a dog"}]})
    with pytest.raises(DataError, match=r"refs\.json: annotation 0 has image_id True"):
        read_coco_references(path)
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json is not valid JSON"):
        read_coco_references(tmp_path / "broken.json")
    with pytest.raises(DataError, match=r"results\.json: no results"):
        read_coco_results(write_json(tmp_path / "results.json", []))


def test_references_need_text_and_images_listed_once(tmp_path):
    path = write_json(tmp_path / "refs.json", {"annotations": [{"image_id": 5, "id": 1, "caption": " "}]})
    with pytest.raises(DataError, match=r"refs\.json: annotation 0 \(image id 5\) has an empty caption"):
        read_coco_references(path)
    path = write_json(tmp_path / "refs.json", {"annotations": [{"image_id": 5, "id": 1, "caption": "a dog"}],
                                               "images": [{"id": 5}, {"id": 5}]})
    with pytest.raises(DataError, match=r"refs\.json: images entry 1 repeats the id 5"):
        read_coco_references(path)
    # A generated caption may be empty (the model said nothing): scored, not refused.
    assert read_coco_results(write_json(tmp_path / "results.json", [{"image_id": 5, "caption": ""}])) == {5: ""}
