"""The visual path is really used: a tiny LaVIN learns image questions, and not without the image."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import write_colour_problems

from data_modules.scienceqa import ScienceQADataModule


def letter_predictions(module, batch) -> list[int]:
    """Teacher-force "The answer is " after each prompt and pick the likeliest option letter.

    This reads what the model believes about the picture without asking a 2-layer random
    LLM to also spell the answer sentence through adapters alone.
    """
    tok = module.tokenizer
    suffix = tok("The answer is ", add_special_tokens=False).input_ids
    letters = [tok(letter, add_special_tokens=False).input_ids[0] for letter in "ABC"]
    rows = [ids[mask.bool()].tolist() + suffix for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    width = max(map(len, rows))
    forced = {**batch,
              "input_ids": torch.tensor([r + [0] * (width - len(r)) for r in rows]),
              "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])}
    model = module.model
    with torch.no_grad():
        embeds, valid, _ = model.prepare(forced)
        positions = torch.arange(embeds.shape[1]).expand(embeds.shape[0], -1)
        hidden = model.run_llm(embeds, valid, positions, embeds.shape[1])
        last = hidden[torch.arange(len(rows)), valid.sum(1) - 1]
        logits = model.llm.lm_head(last)[:, letters]
    return logits.argmax(dim=-1).tolist()


def accuracy(module, datamodule, zero_images: bool) -> float:
    module.eval()
    correct = total = 0
    for batch in datamodule.test_dataloader():
        if zero_images:
            batch["pixel_values"] = torch.zeros_like(batch["pixel_values"])
        for pid, pred in zip(batch["pids"], letter_predictions(module, batch)):
            correct += pred == datamodule.problems[pid]["answer"]
            total += 1
    return correct / total


@pytest.mark.slow
def test_tiny_lavin_learns_from_the_image_and_not_without_it(tmp_path, make_tiny_lavin):
    write_colour_problems(tmp_path, n_train=96, n_test=60)
    L.seed_everything(0, verbose=False)
    module = make_tiny_lavin(seed=0)
    datamodule = ScienceQADataModule(str(tmp_path), prompt_format="QCM-A", global_batch_size=16,
                                     image_size=32, max_seq_len=200, tokenizer=module.tokenizer)
    trainer = L.Trainer(accelerator="cpu", max_steps=150, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    datamodule.setup("test")

    with_image = accuracy(module, datamodule, zero_images=False)
    without_image = accuracy(module, datamodule, zero_images=True)
    # Chance is 1/3; the gap is what reaches the LLM through the ViT, neck and visual slots.
    assert with_image >= 0.8, with_image
    assert without_image <= 0.5, without_image
