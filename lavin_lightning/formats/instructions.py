"""Instruction data: Alpaca, LLaVA-Instruct and prompt files (JSONL), read into checked conversations.

    Alpaca (alpaca_data.json of Stanford Alpaca)
        [{"instruction": str, "input": str (optional), "output": str}, ...]
    LLaVA-Instruct (llava_instruct_150k.json of LLaVA-Instruct-150K)
        [{"id": str|int, "image": "000000033471.jpg" (optional),
          "conversations": [{"from": "human"|"gpt", "value": str}, ...]}, ...]
        the image file is <image_root>/<image>
    Prompts (JSONL, one object a line)
        {"instruction": str, "input": str, "image": str, "id": str}   all but "instruction" optional

Each reader returns :class:`InstructRecord` s in file order and a
:class:`~lavin_lightning.formats.records.ReadReport`; a bad record is a DataError or, with
``on_bad_record="skip"``, left out and counted per reason. Image files named by records are
checked to exist. The "<image>" marker is removed from the text: images reach the models as
pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lavin_lightning.errors import DataError
from lavin_lightning.formats.images import file_problem
from lavin_lightning.formats.records import (
    BadRecord,
    ReadReport,
    check_on_bad_record,
    object_record,
    read_json_list,
    text_field,
)

IMAGE_MARKER = "<image>"

ALPACA_FORMAT = 'the Alpaca format: a list of {"instruction": str, "input": str (optional), "output": str}'
LLAVA_FORMAT = (
    'the LLaVA-Instruct format: a list of {"id": str|int, "image": file under image_root (optional), '
    '"conversations": [{"from": "human"|"gpt", "value": str}, ...]} alternating human, gpt, ..., with "<image>" '
    'in the first human turn exactly when "image" is set'
)
PROMPTS_FORMAT = (
    'one JSON object per line: {"instruction": str, "input": str, "image": str (relative to the '
    'file\'s folder), "id": str}, all but "instruction" optional'
)


@dataclass(frozen=True)
class InstructRecord:
    """One checked conversation of ``(user, assistant)`` turns; a generation prompt has None as its
    last answer. ``input_text`` is the Alpaca "input" of the first turn."""

    pid: str
    turns: tuple[tuple[str, str | None], ...]
    input_text: str = ""
    image: Path | None = None


def _image_file(path: Path) -> Path:
    # Checked while reading (a data module's setup) so that a missing image cannot stop an epoch halfway.
    problem = file_problem(path)
    if problem is not None:
        raise BadRecord("missing_image", f"image {path} {problem}")
    return path


def _alpaca_record(raw: Any, index: int) -> InstructRecord:
    record = object_record(raw)
    instruction = text_field(record, "instruction")
    input_text = text_field(record, "input", required=False)
    output = text_field(record, "output")
    return InstructRecord(f"alpaca-{index}", ((instruction, output),), input_text)


def read_alpaca(path: str | Path, on_bad_record: str = "error") -> tuple[list[InstructRecord], ReadReport]:
    """The records of an Alpaca JSON file in file order (pids ``alpaca-<index>``)."""
    path, report = Path(path), ReadReport(check_on_bad_record(on_bad_record))
    records = [
        report.screen(f"{path}: record {index}", ALPACA_FORMAT, _alpaca_record, raw, index)
        for index, raw in enumerate(read_json_list(path, ALPACA_FORMAT))
    ]
    return [r for r in records if r is not None], report


def _llava_record(raw: Any, index: int, image_root: Path, report: ReadReport) -> InstructRecord:
    record = object_record(raw)
    image = text_field(record, "image", required=False)
    conversation = record.get("conversations")
    if not isinstance(conversation, list) or not conversation:
        raise BadRecord("bad_conversations", "field 'conversations' is missing, empty or not a list")
    texts = []
    for turn, raw_turn in enumerate(conversation):
        where = f"conversations[{turn}]"
        role = object_record(raw_turn, where).get("from")
        if role not in ("human", "gpt"):
            raise BadRecord("unknown_role", f"{where}.from is {role!r}, expected 'human' or 'gpt'")
        if role != ("human", "gpt")[turn % 2]:
            raise BadRecord("bad_turn_order", f"{where}.from is {role!r}; turns must alternate human, gpt, ...")
        value = text_field(raw_turn, "value", name=f"{where}.value")
        if IMAGE_MARKER in value:
            if turn:
                raise BadRecord("misplaced_image_marker", f"{where} has {IMAGE_MARKER!r}; only the first turn may")
            if not image:
                raise BadRecord("marker_without_image", f"{where} has {IMAGE_MARKER!r} but 'image' is not set")
            # LLaVA puts the marker at the start or end of the question, next to a newline.
            value = value.replace(IMAGE_MARKER, "").strip()
            if not value:
                raise BadRecord("empty_field", f"{where}.value has no text besides {IMAGE_MARKER!r}")
        elif turn == 0 and image:
            raise BadRecord("image_without_marker", f"'image' is set but {where} has no {IMAGE_MARKER!r} marker")
        texts.append(value)
    if len(texts) < 2:
        raise BadRecord("no_answer", "the conversation has no 'gpt' turn")
    image_path = _image_file(image_root / image) if image else None
    if len(texts) % 2:
        texts.pop()  # a question without an answer supervises nothing
        report.unanswered_turns += 1
    return InstructRecord(f"llava-{index}", tuple(zip(texts[0::2], texts[1::2])), "", image_path)


def read_llava_instruct(
    path: str | Path, image_root: str | Path, on_bad_record: str = "error"
) -> tuple[list[InstructRecord], ReadReport]:
    """The records of a LLaVA-Instruct JSON file in file order (pids ``llava-<index>``)."""
    path, image_root, report = Path(path), Path(image_root), ReadReport(check_on_bad_record(on_bad_record))
    if not image_root.is_dir():
        raise DataError(
            f"image_root {image_root} is not a folder; expected the images named by the 'image' fields of "
            f"{path} (COCO train2017 for llava_instruct_150k.json)"
        )
    records = [
        report.screen(f"{path}: record {index}", LLAVA_FORMAT, _llava_record, raw, index, image_root, report)
        for index, raw in enumerate(read_json_list(path, LLAVA_FORMAT))
    ]
    return [r for r in records if r is not None], report


def _prompt_record(line: str, line_number: int, folder: Path, seen: dict[str, int]) -> InstructRecord:
    try:
        record = object_record(json.loads(line))
    except json.JSONDecodeError as e:
        raise BadRecord("invalid_json", f"not valid JSON ({e.msg}, column {e.colno})") from None
    except RecursionError:
        raise BadRecord("invalid_json", "nested too deeply to read") from None
    # Images arrive as pixels, so a pasted "<image>" marker is dropped rather than fed as text.
    instruction = text_field(record, "instruction").replace(IMAGE_MARKER, "").strip()
    if not instruction:
        raise BadRecord("empty_field", f"field 'instruction' has no text besides {IMAGE_MARKER!r}")
    input_text = text_field(record, "input", required=False)
    pid = record.get("id", str(line_number))
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
        raise BadRecord("bad_id", f"field 'id' is {pid!r}, expected a non-empty string or an integer")
    pid = str(pid)
    if pid in seen:
        raise BadRecord("duplicate_id", f"id {pid!r} is already used on line {seen[pid]}")
    image = text_field(record, "image", required=False)
    image_path = _image_file(folder / image) if image else None
    seen[pid] = line_number
    return InstructRecord(pid, ((instruction, None),), input_text, image_path)


def read_prompts(path: str | Path, on_bad_record: str = "error") -> tuple[list[InstructRecord], ReadReport]:
    """Generation prompts of a JSONL file; blank lines are skipped, ids default to line numbers."""
    path, report = Path(path), ReadReport(check_on_bad_record(on_bad_record))
    if not path.is_file():
        raise DataError(f"{path} not found: expected {PROMPTS_FORMAT}")
    records, seen = [], {}
    try:
        with open(path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    records.append(
                        report.screen(f"{path}:{line_number}", PROMPTS_FORMAT, _prompt_record, line, line_number,
                                      path.parent, seen)
                    )
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); expected {PROMPTS_FORMAT}") from None
    return [r for r in records if r is not None], report
