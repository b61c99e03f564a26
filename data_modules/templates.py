"""Prompt templates for instruction tuning and chat: one encoding for training and generation.

Two templates, selected by name:

- ``"alpaca"``: the Stanford Alpaca / LLaMA-Adapter prompt; the response follows
  "### Response:" directly (no separator), then EOS.
- ``"lavin"``: LaVIN's plain "Instruction: ...\\n[Input: ...\\n]Response:"; the response
  follows after one space, then EOS.
- ``"plain"``: the user text verbatim (InstructBLIP / LAVIS: the task instruction is the
  whole prompt); the response follows after one space, then EOS. (LAVIS tokenises the
  answer on its own, and a sentencepiece tokenizer starts it with "▁", a space.)

A conversation is a list of ``(user, assistant)`` turns. The first user turn renders as
the template's prompt, later ones as a short continuation; every assistant answer is
supervised together with the EOS id that follows it. ``encode_conversation`` (one
conversation) and ``encode_records`` (many, one tokenizer call) tokenise turn by turn: a
user segment on its own, its answer as the releases do, jointly with the user segment
(``ids(user + answer)`` after the first ``len(ids(user))``), so that a SentencePiece
tokenizer, which puts a dummy "▁" before every string it encodes, does not give the answer
one more. A chat history plus a new user turn (assistant None) therefore encodes exactly as
the prefix of the training sample for the same turns.
"""

from __future__ import annotations

from collections.abc import Sequence

from data_modules.batching import Sample, encode_segments, eos_token_id
from lavin_lightning.batch import IGNORE_INDEX
from lavin_lightning.errors import ConfigError
from lavin_lightning.formats.instructions import InstructRecord

TEMPLATES = ("alpaca", "lavin", "plain")

_ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
_ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

# Per template: how a later user turn continues the conversation, and what precedes an answer.
_FOLLOW_UP = {
    "alpaca": "\n\n### Instruction:\n{instruction}\n\n### Response:",
    "lavin": "\nInstruction: {instruction}\nResponse:",
    "plain": "\n{instruction}",
}
_ANSWER_PREFIX = {"alpaca": "", "lavin": " ", "plain": " "}

# PETAL's "original instructions" (paper Table 7), stacked line by line after the task
# instruction as the instruction-encoder input when a data module sets ``original_instructions``.
ORIGINAL_INSTRUCTIONS = {  # the release's strings (datasets' Instruct_1..3), without the paper's "?"
    "caption": (
        "What objects are in the picture",
        "What are the characteristics of the objects in the picture",
        "What is the relationship between the objects in the picture",
    ),
    "vqa": (
        "What objects are in the picture",
        "What color are the objects in the picture",
        "What are the characteristics of the objects in the picture",
    ),
}


def instruction_suffix(original_instructions: str | None) -> str:
    """The text appended to the instruction-encoder input: nothing, or a set of Table 7's lines."""
    if original_instructions is None:
        return ""
    if original_instructions not in ORIGINAL_INSTRUCTIONS:
        raise ConfigError(f"unknown original_instructions {original_instructions!r}; expected None or one of "
                          f"{list(ORIGINAL_INSTRUCTIONS)}")
    return "".join("\n" + line for line in ORIGINAL_INSTRUCTIONS[original_instructions])


def instruction_prompt(instruction: str, input_text: str = "") -> str:
    """The text-only prompt of an Alpaca record; like ScienceQA prompts it ends in "Response:"."""
    if input_text:
        return f"Instruction: {instruction}\nInput: {input_text}\nResponse:"
    return f"Instruction: {instruction}\nResponse:"


def check_template(template: str) -> str:
    """Return ``template`` if it is a known name; ConfigError listing the names otherwise."""
    if template not in TEMPLATES:
        raise ConfigError(f"unknown prompt template {template!r}; expected one of {list(TEMPLATES)}")
    return template


def check_max_seq_len(max_seq_len: int) -> int:
    if not isinstance(max_seq_len, int) or max_seq_len < 2:
        raise ConfigError(f"max_seq_len must be an integer >= 2 (BOS and one token), got {max_seq_len!r}")
    return max_seq_len


def render_prompt(template: str, instruction: str, input_text: str = "") -> str:
    """The single-turn generation prompt (ends with the response header).

    Multi-turn prompts have EOS ids between turns, which no string can carry: use
    :func:`encode_conversation` for those.
    """
    return conversation_segments(template, [(instruction, None)], input_text)[0][0]


def conversation_segments(
    template: str, turns: Sequence[tuple[str, str | None]], input_text: str = ""
) -> list[tuple[str, bool]]:
    """``(text, is_answer)`` segments of a conversation, in order.

    ``turns`` are ``(user, assistant)`` pairs; only the last assistant may be None (a
    generation prompt, which then ends with the response header). ``input_text`` is the
    Alpaca "input" of the first turn. EOS ids are not text:
    :func:`~data_modules.batching.encode_segments` adds one after each answer.
    """
    check_template(template)
    if not turns:
        raise ConfigError("a conversation needs at least one (user, assistant) turn")
    segments = []
    for index, (user, assistant) in enumerate(turns):
        if index == 0 and template == "alpaca":
            head = _ALPACA_WITH_INPUT if input_text else _ALPACA
            segments.append((head.format(instruction=user, input=input_text), False))
        elif index == 0 and template == "plain":
            segments.append((f"{user}\n{input_text}" if input_text else user, False))
        elif index == 0:
            segments.append((instruction_prompt(user, input_text), False))
        else:
            segments.append((_FOLLOW_UP[template].format(instruction=user), False))
        if assistant is None:
            if index != len(turns) - 1:
                raise ConfigError(f"turn {index} has no answer; only the last turn may leave it None")
        else:
            segments.append((_ANSWER_PREFIX[template] + assistant, True))
    return segments


def encode_conversation(
    tokenizer,
    template: str,
    turns: Sequence[tuple[str, str | None]],
    input_text: str = "",
    max_seq_len: int = 512,
) -> tuple[list[int], list[int] | None, bool]:
    """``(input_ids, labels, truncated)`` of a conversation (see :func:`conversation_segments`).

    Each segment is tokenised on its own without special tokens; BOS comes first and EOS after
    every answer. A training sample longer than ``max_seq_len`` keeps its beginning, as
    LLaMA-Adapter does; with assistant None in the last turn the result is a generation prompt
    (labels None) and a too-long one loses tokens after BOS so that its end survives.
    """
    check_max_seq_len(max_seq_len)
    segments = conversation_segments(template, turns, input_text)
    ids = segment_ids(tokenizer, [segments])[0]
    encoded = encode_segments(list(zip(ids, [answer for _, answer in segments])), tokenizer.bos_token_id,
                              eos_token_id(tokenizer), max_seq_len)
    return encoded.input_ids, encoded.labels, encoded.truncated


def segment_ids(tokenizer, conversations: Sequence[Sequence[tuple[str, bool]]]) -> list[list[list[int]]]:
    """Token ids of every segment of every conversation, in one tokenizer call: a user segment
    encoded on its own, an answer jointly with the user segment before it (the ids after the
    user segment's own), as the releases encode prompt + answer."""
    texts: list[str] = []
    for segments in conversations:
        for index, (text, is_answer) in enumerate(segments):
            texts.append(segments[index - 1][0] + text if is_answer and index > 0 else text)
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    out = []
    for segments in conversations:
        ids: list[list[int]] = []
        for index, (_, is_answer) in enumerate(segments):
            own = list(next(encoded))
            ids.append(own[len(ids[index - 1]):] if is_answer and index > 0 else own)
        out.append(ids)
    return out


def encode_records(
    records: list[InstructRecord],
    tokenizer,
    template: str,
    max_seq_len: int,
    instruction_tokenizer=None,
    instruction_suffix: str = "",
    instruction_max_len: int = 128,
) -> tuple[list[Sample], dict[str, int]]:
    """Samples for the records plus ``{"samples", "truncated", "dropped"}`` counts.

    The encoding of :func:`encode_conversation`, with one batched tokenizer call.
    ``truncated`` counts samples longer than ``max_seq_len``; ``dropped`` those of them with
    no supervised token left (left out). With an ``instruction_tokenizer`` (a model's
    instruction encoder, e.g. InstructBLIP's Q-Former) each sample also carries its first user
    turn plus ``instruction_suffix`` tokenised by it (special tokens included, at most
    ``instruction_max_len`` ids).
    """
    segments = [conversation_segments(template, r.turns, r.input_text) for r in records]
    ids = iter(segment_ids(tokenizer, segments))
    instructions = iter([None] * len(records))
    if instruction_tokenizer is not None and records:
        instructions = iter(instruction_tokenizer([r.turns[0][0] + instruction_suffix for r in records],
                                                  truncation=True, max_length=instruction_max_len)["input_ids"])
    bos, eos = tokenizer.bos_token_id, eos_token_id(tokenizer)
    samples, truncated, dropped = [], 0, 0
    for record, parts in zip(records, segments):
        input_ids, labels, cut, _ = encode_segments(list(zip(next(ids), [answer for _, answer in parts])), bos,
                                                    eos, max_seq_len)
        instruction_ids = next(instructions)
        truncated += cut
        # Only a cut sample can lose all its targets (an uncut one keeps at least EOS).
        if cut and labels is not None and labels.count(IGNORE_INDEX) == len(labels):
            dropped += 1
            continue
        samples.append(Sample(record.pid, input_ids, labels, record.image, instruction_ids))
    return samples, {"samples": len(samples), "truncated": truncated, "dropped": dropped}
