"""Instruction-tuning data: templates, Alpaca / LLaVA-Instruct / mixture / prompt modules, errors."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from data_modules import scienceqa
from data_modules.batching import encode_segments
from data_modules.instruct import (
    AlpacaDataModule,
    InstructionMixtureDataModule,
    LLaVAInstructDataModule,
    PromptsDataModule,
)
from data_modules.templates import (
    TEMPLATES,
    conversation_segments,
    encode_conversation,
    instruction_prompt,
    render_prompt,
)
from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.errors import ConfigError, DataError

BOS, EOS = 1, 2
TOK = byte_tokenizer()

ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nName a colour.\n\n### Response:"
)
ALPACA = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour."},
    {"instruction": "What is two plus two?", "output": "Four."},  # "input" is optional
]


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


LLAVA = [
    {"id": "000000000001", "image": "red.png", "conversations": [
        human("<image>\nWhat colour is the square?"), gpt("Red."),
        human("Is it large?"), gpt("No, it is small."),
        human("Anything else?"), gpt("A white background.")]},
    {"id": 2, "image": "blue.png", "conversations": [human("Describe the picture.\n<image>"), gpt("A blue circle.")]},
    {"id": "000000000001", "image": "red.png", "conversations": [  # ids repeat in LLaVA-Instruct
        human("<image>\nWhat shape?"), gpt("A square."), human("Why ask?")]},  # unanswered turn: dropped
]


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def write_images(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (220, 10, 10)).save(root / "red.png")
    Image.new("RGB", (8, 8), (10, 10, 220)).save(root / "blue.png")
    return root


def alpaca_dm(path, **kwargs):
    kwargs.setdefault("global_batch_size", 2)
    return AlpacaDataModule(str(path), tokenizer=TOK, **kwargs)


def llava_dm(path, image_root, **kwargs):
    kwargs.setdefault("global_batch_size", 2)
    return LLaVAInstructDataModule(str(path), str(image_root), tokenizer=TOK, image_size=16, **kwargs)


def items(dm, role="train"):
    ds = dm.datasets[role]
    return [ds[i] for i in range(len(ds))]


def supervised_spans(item) -> list[str]:
    """The decoded runs of consecutive supervised tokens."""
    spans, current = [], []
    for token, label in zip(item["input_ids"].tolist(), item["labels"].tolist()):
        if label != -100:
            assert label == token  # labels are not shifted
            current.append(token)
        elif current:
            spans.append(TOK.decode(current))
            current = []
    if current:
        spans.append(TOK.decode(current))
    return spans


# --------------------------------------------------------------------------- templates


def test_alpaca_template_strings_are_exact():
    assert render_prompt("alpaca", "Translate to French.", "Good morning") == ALPACA_INPUT
    assert render_prompt("alpaca", "Name a colour.") == ALPACA_NO_INPUT
    assert render_prompt("lavin", "Translate.", "Hallo") == "Instruction: Translate.\nInput: Hallo\nResponse:"
    assert render_prompt("lavin", "Say hi.") == "Instruction: Say hi.\nResponse:"


def test_instruction_prompt_moved_but_unchanged():
    assert scienceqa.instruction_prompt is instruction_prompt
    assert instruction_prompt("Say hi.") == "Instruction: Say hi.\nResponse:"
    assert instruction_prompt("Say hi.", "") == "Instruction: Say hi.\nResponse:"
    assert instruction_prompt("Translate.", "Hallo") == "Instruction: Translate.\nInput: Hallo\nResponse:"


def test_unknown_template_lists_the_names(tmp_path):
    with pytest.raises(ConfigError, match="'alpaca', 'lavin', 'plain'"):
        render_prompt("vicuna", "Hi")
    with pytest.raises(ConfigError, match="'alpaca', 'lavin', 'plain'"):
        alpaca_dm(tmp_path / "a.json", template="vicuna")
    assert TEMPLATES == ("alpaca", "lavin", "plain")


def test_multi_turn_segments():
    turns = [("Q1", "A1"), ("Q2", None)]
    assert conversation_segments("lavin", turns) == [
        ("Instruction: Q1\nResponse:", False), (" A1", True), ("\nInstruction: Q2\nResponse:", False)]
    alpaca = conversation_segments("alpaca", turns)
    assert alpaca[1:] == [("A1", True), ("\n\n### Instruction:\nQ2\n\n### Response:", False)]
    with pytest.raises(ConfigError, match="only the last turn"):
        conversation_segments("lavin", [("Q1", None), ("Q2", "A2")])


# --------------------------------------------------------------------------- Alpaca


@pytest.mark.parametrize("template", ["alpaca", "lavin"])
def test_alpaca_supervises_exactly_output_and_eos(tmp_path, template):
    dm = alpaca_dm(write_json(tmp_path / "alpaca.json", ALPACA), template=template)
    dm.setup("fit")
    train = items(dm)
    assert [i["pid"] for i in train] == ["alpaca-0", "alpaca-1", "alpaca-2"]
    sep = " " if template == "lavin" else ""
    for item, record in zip(train, ALPACA):
        ids, labels = item["input_ids"], item["labels"]
        prompt = render_prompt(template, record["instruction"], record.get("input", ""))
        n_masked = int((labels == -100).sum())
        assert ids[0] == BOS and labels[0] == -100
        assert (labels[:n_masked] == -100).all()  # the masked part is BOS + prompt, a prefix
        assert TOK.decode(ids[:n_masked].tolist()) == "<s>" + prompt
        assert supervised_spans(item) == [sep + record["output"] + "</s>"]
        assert ids[-1] == EOS
        assert item["has_image"] is False and (item["pixel_values"] == 0).all()
    assert TOK.decode(train[0]["input_ids"].tolist()) == "<s>" + (
        ALPACA_NO_INPUT + "Blue.</s>" if template == "alpaca" else "Instruction: Name a colour.\nResponse: Blue.</s>")
    assert TOK.decode(train[1]["input_ids"][1:].tolist()).startswith(
        ALPACA_INPUT if template == "alpaca" else "Instruction: Translate to French.\nInput: Good morning\n")


def test_plain_template_is_the_instruction_verbatim():
    assert render_prompt("plain", "Question: what? Short answer:") == "Question: what? Short answer:"
    ids, labels, _ = encode_conversation(TOK, "plain", [("Question: what? Short answer:", "red")])
    assert TOK.decode(ids) == "<s>Question: what? Short answer: red</s>"
    assert TOK.decode([i for i, label in zip(ids, labels) if label != -100]) == " red</s>"


def test_alpaca_batches_follow_the_contract(tmp_path):
    dm = alpaca_dm(write_json(tmp_path / "alpaca.json", ALPACA), global_batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    lengths = [len(i["input_ids"]) for i in items(dm)]
    assert batch["input_ids"].shape == (3, max(lengths)) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.long and batch["labels"].dtype == torch.long
    assert batch["pixel_values"].shape == (3, 3, 1, 1) and batch["pixel_values"].dtype == torch.float32
    assert batch["has_image"].dtype == torch.bool and not batch["has_image"].any()
    assert sorted(batch["pids"]) == ["alpaca-0", "alpaca-1", "alpaca-2"]
    for row in range(3):  # right padding with the pad id; -100 labels on padding
        n = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
        assert (batch["input_ids"][row, n:] == TOK.pad_token_id).all()
        assert (batch["labels"][row, n:] == -100).all()
        assert batch["input_ids"][row, 0] == BOS


def test_val_size_holds_out_the_last_records_and_limit_cuts_training(tmp_path):
    dm = alpaca_dm(write_json(tmp_path / "alpaca.json", ALPACA), val_size=1, limit=1)
    dm.setup("fit")
    assert [i["pid"] for i in items(dm, "train")] == ["alpaca-0"]
    assert [i["pid"] for i in items(dm, "val")] == ["alpaca-2"]
    assert dm.report["alpaca"]["records"] == 3
    assert next(iter(dm.val_dataloader()))["pids"] == ["alpaca-2"]
    with pytest.raises(ConfigError, match="val_size 3 leaves no training records"):
        alpaca_dm(tmp_path / "alpaca.json", val_size=3).setup("fit")


def test_global_batch_gives_accumulation(tmp_path):
    dm = alpaca_dm(write_json(tmp_path / "alpaca.json", ALPACA), global_batch_size=8, micro_batch_size=4)
    dm.setup("fit")
    assert (dm.per_device_batch_size, dm.accumulate_grad_batches) == (4, 2)
    with pytest.raises(ConfigError, match="not divisible"):
        alpaca_dm(tmp_path / "alpaca.json", global_batch_size=6, micro_batch_size=4)


class _Counter(L.LightningModule):
    """Counts validation steps; its tokenizer is handed to the data module."""

    def __init__(self):
        super().__init__()
        self.tokenizer = byte_tokenizer()
        self.embed = torch.nn.Embedding(259, 4)
        self.val_steps = 0

    def training_step(self, batch, batch_idx):
        return self.embed(batch["input_ids"]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.val_steps += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
@pytest.mark.parametrize("val_size, val_steps", [(0, 0), (1, 1)])
def test_validation_runs_only_with_held_out_data(tmp_path, val_size, val_steps):
    model = _Counter()
    dm = AlpacaDataModule(str(write_json(tmp_path / "alpaca.json", ALPACA)), val_size=val_size, global_batch_size=2,
                          tokenizer=model.tokenizer)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert model.val_steps == val_steps
    assert dm.tokenizer is model.tokenizer


# --------------------------------------------------------------------------- LLaVA


@pytest.mark.parametrize("template", ["alpaca", "lavin"])
def test_llava_multi_turn_supervises_only_answers(tmp_path, template):
    dm = llava_dm(write_json(tmp_path / "llava.json", LLAVA), write_images(tmp_path / "images"), template=template)
    dm.setup("fit")
    first, second, third = items(dm)
    sep = " " if template == "lavin" else ""
    assert supervised_spans(first) == [sep + a + "</s>" for a in ("Red.", "No, it is small.", "A white background.")]
    assert supervised_spans(second) == [sep + "A blue circle.</s>"]
    assert supervised_spans(third) == [sep + "A square.</s>"]  # the unanswered question is dropped
    assert dm.report["llava"]["unanswered_turns"] == 1
    texts = [TOK.decode(i["input_ids"].tolist()) for i in (first, second, third)]
    assert all("<image>" not in t for t in texts)
    if template == "lavin":
        assert texts[0] == (
            "<s>Instruction: What colour is the square?\nResponse: Red.</s>\nInstruction: Is it large?\n"
            "Response: No, it is small.</s>\nInstruction: Anything else?\nResponse: A white background.</s>")
        assert texts[1] == "<s>Instruction: Describe the picture.\nResponse: A blue circle.</s>"  # marker at the end
    else:
        assert texts[0].startswith("<s>" + render_prompt("alpaca", "What colour is the square?") + "Red.</s>")
        assert texts[0].endswith("</s>\n\n### Instruction:\nAnything else?\n\n### Response:A white background.</s>")
    assert [i["pid"] for i in (first, second, third)] == ["llava-0", "llava-1", "llava-2"]
    for item in (first, second, third):
        assert item["has_image"] is True
        assert item["pixel_values"].shape == (3, 16, 16) and item["pixel_values"].abs().sum() > 0
    # Red image: the red channel is the largest after normalisation.
    assert first["pixel_values"][0].mean() > first["pixel_values"][2].mean()
    batch = next(iter(dm.train_dataloader()))
    assert batch["has_image"].all() and batch["pixel_values"].shape == (2, 3, 16, 16)


@pytest.mark.parametrize("template", ["alpaca", "lavin"])
def test_generation_prompt_is_the_prefix_of_the_training_encoding(tmp_path, template):
    dm = llava_dm(write_json(tmp_path / "llava.json", LLAVA[:1]), write_images(tmp_path / "images"), template=template)
    dm.setup("fit")
    trained = dm.datasets["train"][0]["input_ids"].tolist()
    turns = [("What colour is the square?", "Red."), ("Is it large?", "No, it is small."),
             ("Anything else?", "A white background.")]
    full, labels, truncated = encode_conversation(TOK, template, turns)
    assert full == trained and not truncated
    for n in (1, 2, 3):  # history of n - 1 answered turns + a new question
        prompt, no_labels, _ = encode_conversation(TOK, template, turns[: n - 1] + [(turns[n - 1][0], None)])
        assert no_labels is None
        assert trained[: len(prompt)] == prompt
        assert TOK.decode(prompt).endswith("Response:")
        assert prompt[0] == BOS and (n == 1 or EOS in prompt)


# --------------------------------------------------------------------------- mixture


def test_mixture_shuffles_both_modalities_into_batches(tmp_path):
    alpaca = write_json(tmp_path / "alpaca.json", ALPACA * 2)
    llava = write_json(tmp_path / "llava.json", LLAVA * 2)
    dm = InstructionMixtureDataModule(str(alpaca), str(llava), str(write_images(tmp_path / "images")),
                                      global_batch_size=4, tokenizer=TOK, image_size=16, seed=0)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 6 + 6
    batches = list(dm.train_dataloader())
    assert sorted(p for b in batches for p in b["pids"]) == sorted(
        [f"alpaca-{i}" for i in range(6)] + [f"llava-{i}" for i in range(6)])
    assert any(b["has_image"].any() and not b["has_image"].all() for b in batches)
    for b in batches:  # text-only rows carry zero pixels
        assert (b["pixel_values"][~b["has_image"]] == 0).all()
    again = [p for b in dm.train_dataloader() for p in b["pids"]]
    assert again == [p for b in batches for p in b["pids"]]  # same seed, same order

    limited = InstructionMixtureDataModule(str(alpaca), str(llava), str(tmp_path / "images"), val_size=1,
                                           limit_alpaca=2, limit_llava=3, global_batch_size=4, tokenizer=TOK)
    limited.setup("fit")
    assert len(limited.datasets["train"]) == 5
    assert [i["pid"] for i in items(limited, "val")] == ["alpaca-5", "llava-5"]


# --------------------------------------------------------------------------- truncation


def test_training_truncation_keeps_the_beginning_and_drops_unsupervised(tmp_path):
    records = [
        {"instruction": "Hi.", "output": "Hello."},  # fits
        {"instruction": "Hi.", "output": "x" * 100},  # answer cut at the end
        {"instruction": "y" * 100, "output": "z"},  # nothing supervised left: dropped
    ]
    dm = alpaca_dm(write_json(tmp_path / "alpaca.json", records), template="lavin", max_seq_len=40)
    dm.setup("fit")
    assert dm.report["train"] == {"samples": 2, "truncated": 2, "dropped": 1}
    kept = items(dm)
    assert [i["pid"] for i in kept] == ["alpaca-0", "alpaca-1"]
    cut = kept[1]
    assert len(cut["input_ids"]) == 40 and cut["input_ids"][-1] != EOS
    assert TOK.decode(cut["input_ids"].tolist()).startswith("<s>Instruction: Hi.\nResponse: xxx")
    budget = 40 - 1 - len("Instruction: Hi.\nResponse:")  # byte tokens left after BOS + prompt
    assert supervised_spans(cut) == [(" " + "x" * 100)[:budget]]


def test_long_generation_prompt_is_cut_from_the_left(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"instruction": "w" * 200}) + "\n" + json.dumps({"instruction": "Hi."}) + "\n")
    dm = PromptsDataModule(str(path), template="lavin", max_seq_len=32, tokenizer=TOK)
    dm.setup("predict")
    assert dm.report["predict"] == {"samples": 2, "truncated": 1, "dropped": 0}
    long, short = dm.dataset[0], dm.dataset[1]
    assert len(long["input_ids"]) == 32 and long["input_ids"][0] == BOS
    assert TOK.decode(long["input_ids"].tolist()) == "<s>" + "w" * (31 - len("\nResponse:")) + "\nResponse:"
    assert TOK.decode(short["input_ids"].tolist()) == "<s>Instruction: Hi.\nResponse:"
    # Without BOS the last tokens are kept.
    ids, labels, truncated, _ = encode_segments([([5, 6, 7, 8], False)], None, EOS, 2)
    assert (ids, labels, truncated) == ([7, 8], None, True)


# --------------------------------------------------------------------------- prompts


def test_prompts_module_gives_generation_rows_and_records(tmp_path):
    write_images(tmp_path / "imgs")
    path = tmp_path / "prompts.jsonl"
    lines = [
        json.dumps({"instruction": "What colour is this?", "image": "imgs/red.png", "id": "q-red"}),
        "",  # blank lines are skipped
        json.dumps({"instruction": "Translate to French.", "input": "Good morning"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    dm = PromptsDataModule(str(path), tokenizer=TOK, image_size=16, eval_batch_size=4)
    dm.setup("predict")
    assert dm.records == {
        "q-red": {"instruction": "What colour is this?", "input": "", "image": str(tmp_path / "imgs" / "red.png")},
        "3": {"instruction": "Translate to French.", "input": "Good morning", "image": None},
    }
    batch = next(iter(dm.predict_dataloader()))
    assert "labels" not in batch and batch["pids"] == ["q-red", "3"]
    assert batch["has_image"].tolist() == [True, False]
    assert batch["pixel_values"][0].abs().sum() > 0 and (batch["pixel_values"][1] == 0).all()
    n = int(batch["attention_mask"][1].sum())
    assert batch["input_ids"][1, :n].tolist() == [BOS] + TOK(ALPACA_INPUT, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- bad input


def _jsonl(*objects_or_lines) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects_or_lines)


BAD_PROMPTS = {
    "invalid_json": (_jsonl({"instruction": "a"}, '{"instruction": "b"'), ":2: not valid JSON"),
    "duplicate_id": (_jsonl({"instruction": "a", "id": "x"}, {"instruction": "b"}, {"instruction": "c", "id": "x"}),
                     ":3: id 'x' is already used on line 1"),
    "missing_image": (_jsonl({"instruction": "a"}, {"instruction": "b", "image": "nope.png"}), ":2: image"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROMPTS))
def test_bad_prompt_lines(tmp_path, case):
    text, message = BAD_PROMPTS[case]
    path = tmp_path / "prompts.jsonl"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        PromptsDataModule(str(path), tokenizer=TOK).setup("predict")
    assert f"{path}{message}" in str(e.value)
    skipping = PromptsDataModule(str(path), tokenizer=TOK, on_bad_record="skip")
    skipping.setup("predict")
    assert skipping.report["prompts"]["skipped"] == {case: 1}
    assert len(skipping.records) == len(text.splitlines()) - 1


BAD_ALPACA = {
    "empty_field": ({"instruction": "  ", "output": "x"}, "record 1: field 'instruction' is empty"),
    "missing_field": ({"instruction": "x"}, "record 1: field 'output' is missing"),
    "not_a_string": ({"instruction": "x", "input": 3, "output": "y"}, "record 1: field 'input' is a int"),
    "not_an_object": ("text", "record 1: the record is a str"),
}


@pytest.mark.parametrize("case", sorted(BAD_ALPACA))
def test_bad_alpaca_records(tmp_path, case):
    record, message = BAD_ALPACA[case]
    path = write_json(tmp_path / "alpaca.json", [ALPACA[0], record, ALPACA[1]])
    with pytest.raises(DataError, match="expected the Alpaca format") as e:
        alpaca_dm(path).setup("fit")
    assert f"{path}: {message}" in str(e.value)
    dm = alpaca_dm(path, on_bad_record="skip")
    dm.setup("fit")
    assert [i["pid"] for i in items(dm)] == ["alpaca-0", "alpaca-2"]
    assert dm.report["alpaca"]["skipped"] == {case: 1}


def test_malformed_json_file_is_never_skipped(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text('[{"instruction": "a",\n "output": }]')
    for policy in ("error", "skip"):
        with pytest.raises(DataError, match=r"is not valid JSON \(line 2, column") as e:
            alpaca_dm(path, on_bad_record=policy).setup("fit")
        assert str(e.value).startswith(str(path))
    with pytest.raises(DataError, match="expected a list of records"):
        alpaca_dm(write_json(tmp_path / "obj.json", ALPACA[0])).setup("fit")


GOOD = LLAVA[1]
BAD_LLAVA = {
    "no_answer": ({"image": "red.png", "conversations": [human("<image>\nHello?")]}, "no 'gpt' turn"),
    "marker_without_image": ({"conversations": [human("<image>\nWhat?"), gpt("A.")]},
                             "conversations[0] has '<image>' but 'image' is not set"),
    "image_without_marker": ({"image": "red.png", "conversations": [human("What?"), gpt("A.")]},
                             "'image' is set but conversations[0] has no '<image>' marker"),
    "missing_image": ({"image": "nope.png", "conversations": [human("<image>\nWhat?"), gpt("A.")]},
                      "nope.png not found"),
    "unknown_role": ({"conversations": [human("Hi"), {"from": "assistant", "value": "A."}]},
                     "conversations[1].from is 'assistant', expected 'human' or 'gpt'"),
    "bad_turn_order": ({"conversations": [gpt("A."), human("Hi")]}, "conversations[0].from is 'gpt'; turns must"),
    "misplaced_image_marker": ({"image": "red.png", "conversations": [
        human("<image>\nWhat?"), gpt("A."), human("<image>\nAnd?"), gpt("B.")]}, "conversations[2] has '<image>'"),
}


@pytest.mark.parametrize("case", sorted(BAD_LLAVA))
def test_bad_llava_records(tmp_path, case):
    record, message = BAD_LLAVA[case]
    path = write_json(tmp_path / "llava.json", [GOOD, {"id": "bad", **record}])
    images = write_images(tmp_path / "images")
    with pytest.raises(DataError, match="expected the LLaVA-Instruct format") as e:
        llava_dm(path, images).setup("fit")
    assert f"{path}: record 1: " in str(e.value) and message in str(e.value)
    dm = llava_dm(path, images, on_bad_record="skip")
    dm.setup("fit")
    assert [i["pid"] for i in items(dm)] == ["llava-0"]
    assert dm.report["llava"]["skipped"] == {case: 1}


def test_skip_counts_every_reason_and_nothing_usable_is_an_error(tmp_path):
    bad = [{"id": k, **record} for k, (record, _) in BAD_LLAVA.items()]
    path = write_json(tmp_path / "llava.json", [GOOD, *bad, GOOD])
    images = write_images(tmp_path / "images")
    dm = llava_dm(path, images, on_bad_record="skip")
    dm.setup("fit")
    assert dm.report["llava"]["skipped"] == dict.fromkeys(BAD_LLAVA, 1)
    assert len(dm.datasets["train"]) == 2
    with pytest.raises(DataError, match="no usable records"):
        llava_dm(write_json(tmp_path / "bad.json", bad), images, on_bad_record="skip").setup("fit")
    with pytest.raises(DataError, match="image_root .* is not a folder"):
        llava_dm(path, tmp_path / "no-images").setup("fit")


def test_config_errors(tmp_path):
    path = tmp_path / "a.json"
    with pytest.raises(ConfigError, match="on_bad_record"):
        alpaca_dm(path, on_bad_record="ignore")
    with pytest.raises(ConfigError, match="max_seq_len"):
        alpaca_dm(path, max_seq_len=1)
    with pytest.raises(ConfigError, match="limit"):
        alpaca_dm(path, limit=0)
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        AlpacaDataModule(str(write_json(path, ALPACA))).setup("fit")


# --------------------------------------------------------------------------- with real models


@pytest.mark.parametrize("method", ["lavin", "excitor"])
def test_multimodal_methods_train_on_the_mixture(tmp_path, method, make_tiny_lavin):
    """LaVIN's chatbot recipe end to end on the tiny backbones: mixed batches, loss falls."""
    import lightning as L

    from lavin_lightning.adapters.excitor import ExcitorConfig
    from lavin_lightning.backbones.llama import LLMSpec
    from lavin_lightning.backbones.vision import VisionSpec
    from lavin_lightning.models.base import OptimConfig
    from lavin_lightning.models.excitor import Excitor

    alpaca = write_json(tmp_path / "alpaca.json", ALPACA * 2)
    llava = write_json(tmp_path / "llava.json", LLAVA * 2)
    dm = InstructionMixtureDataModule(str(alpaca), str(llava), str(write_images(tmp_path / "images")),
                                      template="lavin", global_batch_size=4, image_size=32, seed=0)
    if method == "lavin":
        module = make_tiny_lavin()
    else:
        torch.manual_seed(0)
        module = Excitor(llm=LLMSpec(config="tiny"), vision=VisionSpec(kind="clip", config="tiny", projection=True,
                                                                       cls_every=1),
                         adapter=ExcitorConfig(layers=2, prompt_length=4, rank=4),
                         optim=OptimConfig(lr=1e-2, base_lr=None, warmup_epochs=0.0))
    module.configure_model()
    dm.tokenizer = module.tokenizer
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module.eval()
    with torch.no_grad():
        before = module.model.loss(batch).item()
    module.train()
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    module.eval()
    with torch.no_grad():
        assert module.model.loss(batch).item() < before
