"""ScienceQA prompt builder, string-for-string as the LaVIN release builds it.

LaVIN (commit dd0a1bf, ``util/base_prompt.py``) reuses the ScienceQA prompt code with
"Response:" in place of "Answer:". A format is ``"<input>-<output>"``, e.g. ``QCM-ALE``:
the input names the parts shown to the model (Question, Context, Multiple options and,
for upper-bound experiments, Lecture / Explanation=solution), the output the parts the
model must produce. The expected strings are checked against the 144 reference cases in
``shared/reference-data/scienceqa/lavin_prompt_cases.json`` by the tests.
"""

from __future__ import annotations

from lavin_lightning.errors import ConfigError, DataError

OPTION_LETTERS = ("A", "B", "C", "D", "E")

# "{q}", "{c}", "{o}" and "{because}" are filled in by ``_input_text``.
_INPUT_TEMPLATES = {
    "CQM": "Context: {c}\nQuestion: {q}\nOptions: {o}\n",
    "QCM": "Question: {q}\nContext: {c}\nOptions: {o}\n",
    # Upper-bound variants (ScienceQA paper): the lecture/solution is given as input.
    "QCML": "Question: {q}\nContext: {c}\nOptions: {o}\nBECAUSE: {l}\n",
    "QCME": "Question: {q}\nContext: {c}\nOptions: {o}\nBECAUSE: {e}\n",
    "QCMLE": "Question: {q}\nContext: {c}\nOptions: {o}\nBECAUSE: {l} {e}\n",
    "QCLM": "Question: {q}\nContext: {c}\nBECAUSE: {l}\nOptions: {o}\n",
    "QCEM": "Question: {q}\nContext: {c}\nBECAUSE: {e}\nOptions: {o}\n",
    "QCLEM": "Question: {q}\nContext: {c}\nBECAUSE: {l} {e}\nOptions: {o}\n",
}

# L = lecture, E = solution. Note the ScienceQA naming quirk kept by LaVIN: "AL" explains
# with the solution and "AE" with the lecture.
_OUTPUT_TEMPLATES = {
    "A": "The answer is {a}.",
    "AL": "The answer is {a}. BECAUSE: {e}",
    "AE": "The answer is {a}. BECAUSE: {l}",
    "ALE": "The answer is {a}. BECAUSE: {l} {e}",
    "AEL": "The answer is {a}. BECAUSE: {e} {l}",
    "LA": "{l} The answer is {a}.",
    "EA": "{e} The answer is {a}.",
    "LEA": "{l} {e} The answer is {a}.",
    "ELA": "{e} {l} The answer is {a}.",
}

INPUT_FORMATS = tuple(_INPUT_TEMPLATES)
OUTPUT_FORMATS = tuple(_OUTPUT_TEMPLATES)


def parse_prompt_format(prompt_format: str) -> tuple[str, str]:
    """Split ``"QCM-ALE"`` into ``("QCM", "ALE")``; ConfigError for anything unknown."""
    parts = prompt_format.split("-") if isinstance(prompt_format, str) else []
    if len(parts) != 2 or parts[0] not in _INPUT_TEMPLATES or parts[1] not in _OUTPUT_TEMPLATES:
        raise ConfigError(
            f"unknown ScienceQA prompt format {prompt_format!r}: expected '<input>-<output>' "
            f"with input in {list(INPUT_FORMATS)} and output in {list(OUTPUT_FORMATS)} "
            "(e.g. 'QCM-ALE')"
        )
    return parts[0], parts[1]


def _record_name(problem: dict) -> str:
    # Problems loaded from problems.json carry no pid field; the data module adds one.
    if problem.get("pid") is not None:
        return f"pid {problem['pid']}"
    return f"question {problem.get('question', '')!r}"


def options_text(problem: dict) -> str:
    """``"(A) c0 (B) c1 ..."``; ScienceQA problems have 2-5 choices."""
    choices = problem.get("choices") or []
    if not 0 < len(choices) <= len(OPTION_LETTERS):
        raise DataError(
            f"ScienceQA problem ({_record_name(problem)}): expected 1-{len(OPTION_LETTERS)} "
            f"choices, got {len(choices)}"
        )
    return " ".join(f"({OPTION_LETTERS[i]}) {c}" for i, c in enumerate(choices))


def answer_letter(problem: dict) -> str:
    answer, n = problem.get("answer"), len(problem.get("choices") or [])
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < n:
        raise DataError(
            f"ScienceQA problem ({_record_name(problem)}): answer must be an index into "
            f"its {n} choices, got {answer!r}"
        )
    return OPTION_LETTERS[answer]


def context_text(problem: dict, use_caption: bool = False, caption: str = "") -> str:
    """Hint (plus the image caption in the text-only ablation), or "N/A" when empty."""
    context = " ".join([problem.get("hint") or "", caption if use_caption else ""]).strip()
    return context or "N/A"


def _escape_newlines(text: str | None) -> str:
    # The release writes newlines inside lecture/solution as the two characters "\n".
    return (text or "").replace("\n", "\\n")


def scienceqa_prompt(
    problem: dict,
    prompt_format: str = "QCM-ALE",
    use_caption: bool = False,
    caption: str = "",
) -> tuple[str, str]:
    """Return ``(input, target)`` for one ScienceQA problem, exactly as LaVIN builds them.

    ``input`` ends with "Response:" and is what the model is given at test time; training
    concatenates ``input + target`` with no separator.
    """
    input_format, output_format = parse_prompt_format(prompt_format)
    options = options_text(problem)
    letter = answer_letter(problem)
    lecture = _escape_newlines(problem.get("lecture"))
    solution = _escape_newlines(problem.get("solution"))

    text_in = _INPUT_TEMPLATES[input_format].format(
        q=problem.get("question", ""),
        c=context_text(problem, use_caption, caption),
        o=options,
        l=lecture,
        e=solution,
    )
    # One pass of double-space removal, as in the release (not a loop).
    text_in = (text_in + "Response:").replace("  ", " ").strip()

    target = _OUTPUT_TEMPLATES[output_format].format(a=letter, l=lecture, e=solution)
    # The release keeps a dangling "BECAUSE:" when lecture and solution are both empty.
    target = target.replace("  ", " ").strip()
    return text_in, target
