"""The image files records name: decoded once at setup, a bad one named with its record, or left out and counted."""

from __future__ import annotations

import io

import pytest
from conftest import write_image
from PIL import Image

import lavin_lightning.formats.images as images
from lavin_lightning.errors import DataError
from lavin_lightning.formats.images import ImageCheck, image_problem, load_image, screen_images
from lavin_lightning.formats.records import BadRecord, ReadReport


def truncated_jpeg(path):
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 80).convert("RGB").save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def test_image_problem_says_why_a_file_is_no_image(tmp_path):
    assert image_problem(write_image(tmp_path / "good.png")) is None
    assert image_problem(tmp_path / "absent.png") == "not found"
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    assert image_problem(tmp_path / "garbage.png").startswith("cannot be decoded (UnidentifiedImageError")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert image_problem(tmp_path / "empty.jpg").startswith("cannot be decoded")


def test_a_truncated_jpeg_passes_verify_but_not_the_check(tmp_path):
    """Why the check decodes: PIL's verify() leaves JPEG data unread, so a half-downloaded file passes it."""
    path = truncated_jpeg(tmp_path / "half.jpg")
    with Image.open(path) as image:
        image.verify()  # no error
    assert "truncated" in image_problem(path)
    with pytest.raises(OSError):
        load_image(path)


def test_image_check_names_the_file_and_decodes_each_file_once(tmp_path, monkeypatch):
    good, bad = write_image(tmp_path / "a.png"), tmp_path / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    calls = []
    decode = images.image_problem
    monkeypatch.setattr(images, "image_problem", lambda path: calls.append(path) or decode(path))
    check = ImageCheck(workers=2)
    check.prefetch([good, bad, good])
    assert check(good) == good and sorted(calls) == [good, bad]
    with pytest.raises(BadRecord, match=r"b\.png cannot be decoded") as error:
        check(bad)
    assert error.value.reason == "bad_image"
    with pytest.raises(BadRecord, match=r"c\.png not found") as error:
        check(tmp_path / "c.png")
    assert error.value.reason == "missing_image" and len(calls) == 3


def test_screen_images_keeps_the_first_usable_and_decodes_only_what_it_looks_at(tmp_path, monkeypatch):
    paths = [write_image(tmp_path / f"{i}.png") for i in range(6)]
    paths[1].write_bytes(b"broken")
    items = [(f"r{i}", path) for i, path in enumerate(paths)] + [("text-only", None)]
    decoded = []
    decode = images.image_problem
    monkeypatch.setattr(images, "image_problem", lambda path: decoded.append(path) or decode(path))

    def where(item):
        return f"data.json: record {item[0]}"

    with pytest.raises(DataError, match=r"^data\.json: record r1: image .*1\.png cannot be decoded .*on_bad_record"):
        screen_images(items, lambda item: item[1], where, ReadReport("error"), ImageCheck())

    decoded.clear()
    report = ReadReport("skip")
    kept = screen_images(items, lambda item: item[1], where, report, ImageCheck(), limit=3)
    assert [name for name, _ in kept] == ["r0", "r2", "r3"]
    assert report.skipped == {"bad_image": 1} and "record r1" in report.first_skipped
    assert sorted(decoded) == sorted(paths[:4])  # r4, r5 are beyond the limit: never opened
    assert screen_images(items, lambda item: item[1], where, ReadReport("skip"), ImageCheck())[-1] == items[-1]
