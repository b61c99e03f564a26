"""The one encoder of BOS + prompt + answer + EOS, its truncation policies, and the padding every batch goes through."""

from __future__ import annotations

import pytest
import torch

from data_modules.batching import collate_sequences, encode_segments, pad_sequences
from lavin_lightning.batch import IGNORE_INDEX
from lavin_lightning.errors import ConfigError

BOS, EOS, X = 1, 2, IGNORE_INDEX


def test_training_row_labels_answers_and_the_eos_after_each():
    encoded = encode_segments([([10, 11], False), ([20], True), ([12], False), ([21, 22], True)], BOS, EOS)
    assert encoded.input_ids == [BOS, 10, 11, 20, EOS, 12, 21, 22, EOS]
    assert encoded.labels == [X, X, X, 20, EOS, X, 21, 22, EOS]
    assert not encoded.truncated and not encoded.prompt_cut


def test_keep_start_cuts_the_end_and_may_lose_the_answer():
    encoded = encode_segments([([10, 11, 12], False), ([20, 21], True)], BOS, EOS, max_length=5)
    assert encoded.input_ids == [BOS, 10, 11, 12, 20] and encoded.labels == [X, X, X, X, 20]
    assert encoded.truncated and not encoded.prompt_cut
    lost = encode_segments([([10, 11, 12], False), ([20], True)], BOS, EOS, max_length=4)
    assert lost.labels == [X] * 4  # nothing supervised left: the caller drops such a row


def test_generation_prompt_keeps_bos_and_its_end():
    encoded = encode_segments([([10, 11], False), ([20], True), ([12, 13, 14], False)], BOS, EOS, max_length=4)
    assert encoded.input_ids == [BOS, 12, 13, 14] and encoded.labels is None
    assert encoded.truncated and encoded.prompt_cut
    assert encode_segments([([10, 11], False)], None, EOS, max_length=1).input_ids == [11]
    whole = encode_segments([([10, 11], False)], BOS, EOS, max_length=3, truncation="cut_prompt")
    assert whole.input_ids == [BOS, 10, 11] and not whole.truncated


def test_cut_prompt_shortens_the_answer_to_its_minimum_then_cuts_the_prompt_from_the_left():
    prompt, answer = list(range(10, 20)), list(range(30, 40))
    # Room for 8 tokens between BOS and EOS: the answer keeps 3 (its minimum), the prompt its last 5.
    encoded = encode_segments([(prompt, False), (answer, True)], BOS, EOS, max_length=10, truncation="cut_prompt",
                              min_answer_tokens=3)
    assert encoded.input_ids == [BOS, 15, 16, 17, 18, 19, 30, 31, 32, EOS]
    assert encoded.labels == [X, X, X, X, X, X, 30, 31, 32, EOS]
    assert encoded.truncated and encoded.prompt_cut
    # A short prompt stays whole; the answer takes the rest of the room.
    short = encode_segments([([10, 11], False), (answer, True)], BOS, EOS, max_length=10, truncation="cut_prompt",
                            min_answer_tokens=3)
    assert short.input_ids == [BOS, 10, 11, 30, 31, 32, 33, 34, 35, EOS] and not short.prompt_cut


def test_cut_prompt_without_eos_never_cuts_the_answer():
    encoded = encode_segments([([10, 11, 12, 13], False), ([30, 31], True)], BOS, None, max_length=4,
                              truncation="cut_prompt")
    assert encoded.input_ids == [BOS, 13, 30, 31] and encoded.labels == [X, X, 30, 31]
    # BOS alone may precede the answer; without BOS one prompt token must.
    assert encode_segments([([10], False), ([30, 31], True)], BOS, None, 3, "cut_prompt").input_ids == [BOS, 30, 31]
    with pytest.raises(ConfigError, match="max_length=2 leaves no room"):
        encode_segments([([10], False), ([30, 31], True)], BOS, None, 2, "cut_prompt")
    with pytest.raises(ConfigError, match="pid 7: max_length=2 leaves no room"):
        encode_segments([([10], False), ([30, 31], True)], None, None, 2, "cut_prompt", where="pid 7")


def test_unknown_truncation_is_refused():
    with pytest.raises(ConfigError, match="truncation"):
        encode_segments([([10], False)], BOS, EOS, truncation="middle")


def test_padding_right_and_left():
    ids, mask = pad_sequences([[5, 6, 7], torch.tensor([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_sequences([[5, 6, 7], [8]], pad_id=0, padding_side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ConfigError, match="padding_side"):
        pad_sequences([[5]], 0, padding_side="middle")


def test_collated_labels_are_ignored_on_padding():
    batch = collate_sequences([[BOS, 5, EOS], [BOS, EOS]], [[X, 5, EOS], [X, EOS]], pad_id=0)
    assert batch["input_ids"].tolist() == [[BOS, 5, EOS], [BOS, EOS, 0]]
    assert batch["labels"].tolist() == [[X, 5, EOS], [X, EOS, X]]
    assert batch["attention_mask"].dtype == torch.long and "labels" not in collate_sequences([[BOS]], None, 0)
