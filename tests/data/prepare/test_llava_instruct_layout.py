"""easy-VQA as LLaVA-Instruct conversations, read alone and in the chatbot's mixture with the instruction set."""

import json
import re

import pytest

pytest.importorskip("easy_vqa")

from data_modules.instruct import InstructionMixtureDataModule, LLaVAInstructDataModule  # noqa: E402
from data_modules.prepare import easy_vqa as builder  # noqa: E402
from data_modules.prepare.easy_vqa import COLORS, SHAPES  # noqa: E402
from data_modules.prepare.instructions import write_instruction_set  # noqa: E402
from data_modules.prepare.llava_instruct import LLAVA_FILE, build_llava_instruct_from_easy_vqa  # noqa: E402
from lavin_lightning.backbones.tiny import byte_tokenizer  # noqa: E402
from lavin_lightning.formats.instructions import read_llava_instruct  # noqa: E402

N = 24
# The chatbot row's batch settings, shrunk (experiments/lavin/chatbot_lavin_7b.yaml).
SMALL = {"template": "lavin", "global_batch_size": 2, "image_size": 16, "max_seq_len": 512,
         "tokenizer": byte_tokenizer()}


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return build_llava_instruct_from_easy_vqa(tmp_path_factory.mktemp("llava") / "data", n_train=N)


def picture(image_id: int) -> tuple[tuple[str, str], dict[str, str], str]:
    """(shape, colour), {question text: answer} and the PNG file of an easy-VQA train picture."""
    import easy_vqa

    train = builder._load_sources(easy_vqa)["train"]
    return (train.facts[image_id], {q.text: q.answer for q in train.questions if q.image_id == image_id},
            train.image_paths[image_id])


def test_records_follow_llava_instruct_and_state_the_facts(llava):
    records = json.loads((llava / LLAVA_FILE).read_text())
    assert len(records) == N == len({r["id"] for r in records})
    kinds = set()
    for r in records:
        (shape, color), answers, png = picture(int(r["id"]))
        assert r["image"] == f"{r['id']}.png" and len(r["id"]) == 12
        assert (llava / "images" / r["image"]).read_bytes() == open(png, "rb").read()
        turns = r["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        first = turns[0]["value"]
        assert first.startswith("<image>\n") or first.endswith("\n<image>")
        assert all("<image>" not in t["value"] for t in turns[1:])
        for question, answer in zip(turns[0::2], turns[1::2]):
            text = question["value"].replace("<image>", "").strip()
            asked = text[:1].lower() + text[1:]
            if asked in answers:  # one of the picture's own easy-VQA questions
                kinds.add("conversation")
                truth = answers[asked]
                assert answer["value"].startswith(f"{truth.capitalize()}." if truth in ("yes", "no") else "It is ")
                assert truth in answer["value"].lower()
            else:  # a request for a description
                kinds.add("detail")
                assert len(turns) == 2 and f"{color} {shape}" in answer["value"]
            mentioned = set(re.findall(r"[a-z]+", answer["value"].lower()))
            # A sentence may name another shape or colour only to say that it is absent.
            if "not" not in mentioned:
                assert not mentioned & (set(SHAPES) - {shape}) and not mentioned & (set(COLORS) - {color})
    assert kinds == {"conversation", "detail"}


def test_llava_data_module_reads_the_build(llava):
    records, report = read_llava_instruct(llava / LLAVA_FILE, llava / "images")
    assert len(records) == N and report.summary() == {"skipped": {}, "unanswered_turns": 0}
    dm = LLaVAInstructDataModule(str(llava / LLAVA_FILE), str(llava / "images"), **SMALL)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == N
    batch = next(iter(dm.train_dataloader()))
    assert batch["has_image"].all() and batch["pixel_values"].shape == (2, 3, 16, 16)
    assert all(pid.startswith("llava-") for pid in batch["pids"])


def test_chatbot_mixture_reads_the_build_with_the_instruction_set(llava, tmp_path):
    alpaca = write_instruction_set(tmp_path / "instructions", n_per_family=4, n_held_out=5)
    dm = InstructionMixtureDataModule(str(tmp_path / "instructions" / "train.json"), str(llava / LLAVA_FILE),
                                      str(llava / "images"), val_size=2, **SMALL)
    dm.setup("fit")
    pids = [s.pid for s in dm.datasets["train"].samples]
    assert sum(p.startswith("llava-") for p in pids) == N - 2
    assert sum(p.startswith("alpaca-") for p in pids) == alpaca["train"] - 2
    with_image = {s.pid.split("-")[0] for s in dm.datasets["train"].samples if s.image_path is not None}
    assert with_image == {"llava"}
    assert len(next(iter(dm.train_dataloader()))["pids"]) == 2
