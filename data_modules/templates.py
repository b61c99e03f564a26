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
supervised together with the EOS id that follows it. ``encode_conversation`` tokenises
segment by segment, so a chat history plus a new user turn (assistant None) encodes
exactly as the prefix of the training sample for the same turns.
"""

from __future__ import annotations

from collections.abc import Sequence

from lavin_lightning.errors import ConfigError

# Cross-entropy's default ignore_index; kept here too since scienceqa.py imports this module.
IGNORE_INDEX = -100

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
    Alpaca "input" of the first turn. EOS ids are not text: :func:`assemble_conversation`
    adds one after each answer.
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


def assemble_conversation(
    segment_ids: Sequence[Sequence[int]],
    is_answer: Sequence[bool],
    bos_id: int | None,
    eos_id: int,
    max_seq_len: int,
) -> tuple[list[int], list[int] | None, bool]:
    """``(input_ids, labels, truncated)`` from tokenised segments.

    BOS (if any) comes first and every answer is followed by ``eos_id``; labels are -100
    on BOS and prompts and equal the ids on answers and their EOS (not shifted). A
    training sample longer than ``max_seq_len`` keeps its beginning, as LLaMA-Adapter
    does. If the last segment is a prompt, the result is a generation prompt: labels
    None, and a too-long prompt loses tokens after BOS so that its end survives.
    """
    input_ids = [] if bos_id is None else [bos_id]
    labels = [IGNORE_INDEX] * len(input_ids)
    for ids, answer in zip(segment_ids, is_answer, strict=True):
        input_ids += ids
        labels += ids if answer else [IGNORE_INDEX] * len(ids)
        if answer:
            input_ids.append(eos_id)
            labels.append(eos_id)
    truncated = len(input_ids) > max_seq_len
    if is_answer[-1]:
        return input_ids[:max_seq_len], labels[:max_seq_len], truncated
    if truncated:
        head = 0 if bos_id is None else 1
        input_ids = input_ids[:head] + input_ids[len(input_ids) - (max_seq_len - head):]
    return input_ids, None, truncated


def eos_token_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos_token_id; instruction targets end with EOS")
    return tokenizer.eos_token_id


def encode_conversation(
    tokenizer,
    template: str,
    turns: Sequence[tuple[str, str | None]],
    input_text: str = "",
    max_seq_len: int = 512,
) -> tuple[list[int], list[int] | None, bool]:
    """Tokenise a conversation (see :func:`conversation_segments`, :func:`assemble_conversation`).

    Each segment is tokenised on its own without special tokens; with assistant None in
    the last turn the result is a generation prompt (labels None).
    """
    check_max_seq_len(max_seq_len)
    segments = conversation_segments(template, turns, input_text)
    ids = tokenizer([text for text, _ in segments], add_special_tokens=False)["input_ids"]
    return assemble_conversation(
        ids, [answer for _, answer in segments], tokenizer.bos_token_id, eos_token_id(tokenizer), max_seq_len
    )
