"""Length-bucketed training batches (mixed modalities, reproducible, resumable, DDP shares) and
length-ordered evaluation batches; ScienceQA's option candidates."""

from __future__ import annotations

import random
import statistics
from types import SimpleNamespace

import pytest
import torch
from conftest import write_colour_problems

from data_modules.batching import EpochShuffle, LengthBuckets, LengthOrder, ResumableLoader
from data_modules.scienceqa import ScienceQADataModule
from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.errors import CheckpointError, ConfigError


def correlated(n=200, seed=0):
    """Lengths that the modality predicts: text-only samples are shorter (their ranges overlap a little)."""
    rng = random.Random(seed)
    has_image = [i % 3 == 0 for i in range(n)]
    lengths = [rng.randint(100, 300) if image else rng.randint(20, 130) for image in has_image]
    return lengths, has_image


def batches_of(order, size):
    return [order[k: k + size] for k in range(0, len(order), size)]


def padding(batches, lengths):
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


def loader(lengths, has_image, seed=3, rank=0, processes=1, batch_size=8, pool=4):
    dataset = list(range(len(lengths)))
    buckets = LengthBuckets(lengths, has_image, batch_size, pool)
    sampler = EpochShuffle(dataset, seed, num_replicas=processes, rank=rank, buckets=buckets)
    return ResumableLoader(dataset, sampler=sampler, batch_size=batch_size, generator=torch.Generator())


def epoch(loader, e, batches=None):
    loader.sampler.set_epoch(e)
    out = []
    for batch in loader:
        out.append(batch.tolist())
        if batches is not None and len(out) == batches:
            break
    return out


def test_every_batch_keeps_both_modalities_and_pads_little():
    lengths, has_image = correlated()
    buckets = LengthBuckets(lengths, has_image, batch_size=8, pool=25)  # one pool: the whole epoch
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    bucketed = batches_of(buckets.share(order, 1, 0, torch.Generator().manual_seed(1)), 8)
    pooled = batches_of(LengthBuckets(lengths, has_image, 8, pool=4).share(order, 1, 0, torch.Generator()), 8)
    assert sorted(sum(bucketed, [])) == list(range(len(lengths)))  # each sample once
    shuffled = batches_of(order, 8)
    # Sorting by length alone would make batches of one modality (the modality predicts the length).
    by_length = batches_of(sorted(order, key=lengths.__getitem__), 8)
    pure = lambda batches: sum(len({has_image[i] for i in b}) == 1 for b in batches)  # noqa: E731
    assert pure(by_length) > len(by_length) // 2
    assert pure(bucketed) == pure(pooled) == 0
    share = sum(has_image) / len(has_image)
    for batch in bucketed[:-1]:  # the pool's proportion, to one sample
        assert abs(sum(has_image[i] for i in batch) - share * len(batch)) <= 1
    # Mixed batches pad their text-only rows up to their image rows: less than shuffled batches,
    # more than batches sorted by length alone (the price of the mix, when lengths follow modality).
    assert padding(by_length, lengths) < padding(bucketed, lengths) < padding(pooled, lengths)
    assert padding(pooled, lengths) < padding(shuffled, lengths)


def test_buckets_pad_little_when_both_modalities_have_similar_lengths():
    rng = random.Random(1)
    lengths = [rng.randint(20, 400) for _ in range(512)]
    has_image = [rng.random() < 0.4 for _ in lengths]
    order = torch.randperm(512, generator=torch.Generator().manual_seed(0)).tolist()
    bucketed = batches_of(LengthBuckets(lengths, has_image, 8, pool=64).share(order, 1, 0, torch.Generator()), 8)
    assert padding(bucketed, lengths) < 0.05 < 0.3 < padding(batches_of(order, 8), lengths)
    assert all(len({has_image[i] for i in b}) == 2 for b in bucketed)


def test_an_epoch_is_reproducible_resumable_and_differs_from_the_next():
    lengths, has_image = correlated(90)
    whole = epoch(loader(lengths, has_image), 1)
    assert whole == epoch(loader(lengths, has_image), 1)
    assert whole != epoch(loader(lengths, has_image), 2)
    assert sorted(sum(whole, [])) == list(range(90))
    stopped = loader(lengths, has_image)
    assert epoch(stopped, 1, batches=3) == whole[:3]
    state = stopped.state_dict()
    assert state["length_buckets"] == {"pool": 4}
    resumed = loader(lengths, has_image)
    resumed.load_state_dict(state)
    assert epoch(resumed, 1) == whole[3:]
    plain = ResumableLoader(list(range(90)), sampler=EpochShuffle(list(range(90)), 3), batch_size=8)
    with pytest.raises(CheckpointError, match="length_buckets"):
        plain.load_state_dict(state)


def test_without_a_seed_the_epochs_draws_come_from_the_global_rng_and_resume():
    lengths, has_image = correlated(50)
    torch.manual_seed(0)
    whole = epoch(loader(lengths, has_image, seed=None), 0)
    torch.manual_seed(0)
    stopped = loader(lengths, has_image, seed=None)
    epoch(stopped, 0, batches=2)
    resumed = loader(lengths, has_image, seed=None)
    resumed.load_state_dict(stopped.state_dict())
    assert epoch(resumed, 0) == whole[2:]


def test_every_process_takes_its_share_of_each_bucketed_batch(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    lengths, has_image = correlated(101)  # padded to 102: DistributedSampler's repeats
    shares = [epoch(loader(lengths, has_image, rank=rank, processes=2, batch_size=4, pool=16), 0) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1])  # as many steps on every process
    assert sorted(set(sum(shares[0] + shares[1], []))) == list(range(101))
    assert sum(map(len, shares[0])) == sum(map(len, shares[1])) == 51
    # The two micro-batches of a global batch are neighbours in length: their longest rows differ
    # less than those of micro-batches of different global batches.
    longest = [[max(lengths[i] for i in b) for b in share] for share in shares]
    together = statistics.mean(abs(a - b) for a, b in zip(*longest, strict=True))
    apart = statistics.mean(abs(a - b) for a, b in zip(longest[0], longest[1][1:] + longest[1][:1], strict=True))
    assert together < apart / 2
    resumed = loader(lengths, has_image, rank=1, processes=2, batch_size=4, pool=16)
    stopped = loader(lengths, has_image, rank=1, processes=2, batch_size=4, pool=16)
    epoch(stopped, 0, batches=5)
    resumed.load_state_dict(stopped.state_dict())
    assert epoch(resumed, 0) == shares[1][5:]


def test_length_order_sorts_longest_first_and_deals_batches_out():
    lengths = [5, 9, 1, 7, 3, 8, 2]
    assert list(LengthOrder(list(range(7)), lengths, batch_size=3)) == [1, 5, 3, 0, 4, 6, 2]
    ranks = [list(LengthOrder(list(range(7)), lengths, batch_size=2, num_replicas=2, rank=r)) for r in (0, 1)]
    assert ranks == [[1, 5, 4, 6], [3, 0, 2, 2]]  # global batches [1 5 | 3 0], [4 6 | 2 +2 repeated]


# ----------------------------------------------------------------------- the data modules


@pytest.fixture
def colour_root(tmp_path):
    write_colour_problems(tmp_path, n_train=40, n_test=10)
    return tmp_path


def scienceqa(root, **kwargs):
    return ScienceQADataModule(str(root), prompt_format="QCM-A", global_batch_size=8, image_size=16, max_seq_len=200,
                               tokenizer=byte_tokenizer(), **kwargs)


def test_a_data_module_buckets_its_training_batches(colour_root):
    dm = scienceqa(colour_root, length_buckets=True, bucket_pool=2)
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler.buckets, LengthBuckets) and sampler.buckets.pool == 2
    assert sampler.buckets.batch_size == 8
    dm = scienceqa(colour_root)
    dm.setup("fit")
    assert dm.train_dataloader().sampler.buckets is None


def fake_trainer(reasons):
    module = SimpleNamespace(batch_dependence=lambda: reasons)
    return SimpleNamespace(lightning_module=module, world_size=1, global_rank=0)


def test_evaluation_order_follows_the_models_batch_independence(colour_root):
    dm = scienceqa(colour_root)
    dm.setup("test")
    assert dm.test_dataloader().sampler.__class__.__name__ == "SequentialSampler"  # no trainer: the split's order
    dm.trainer = fake_trainer([])
    assert isinstance(dm.test_dataloader().sampler, LengthOrder)
    dm.trainer = fake_trainer(["decoding positions depend on the batch"])
    assert not isinstance(dm.test_dataloader().sampler, LengthOrder)  # auto: the split's order
    strict = scienceqa(colour_root, eval_order="length")
    strict.setup("test")
    strict.trainer = fake_trainer(["decoding positions depend on the batch"])
    with pytest.raises(ConfigError, match="depend on their batch"):
        strict.test_dataloader()
    split = scienceqa(colour_root, eval_order="split")
    split.setup("test")
    split.trainer = fake_trainer([])
    assert not isinstance(split.test_dataloader().sampler, LengthOrder)
    with pytest.raises(ConfigError, match="eval_order"):
        scienceqa(colour_root, eval_order="sorted")


def test_option_likelihood_test_samples_carry_each_options_answer_sentence(colour_root):
    dm = scienceqa(colour_root, evaluation="option_likelihood")
    dm.setup("test")
    dm.setup("predict")
    tokenizer = dm.tokenizer
    sample = dm.datasets["test"].samples[0]
    assert [tokenizer.decode(list(c)) for c in sample.candidates] == [f"The answer is {x}." for x in "ABC"]
    assert all(s.candidates is None for s in dm.datasets["predict"].samples)  # predict generates
    batch = next(iter(dm.test_dataloader()))
    assert batch["candidates"][0] == [list(c) for c in sample.candidates]
    with pytest.raises(ConfigError, match="evaluation"):
        scienceqa(colour_root, evaluation="scores")


@pytest.mark.slow
def test_ddp_processes_train_on_their_shares_of_the_bucketed_batches(tmp_path):
    import json

    import lightning as L
    from conftest import tiny_lavin

    write_colour_problems(tmp_path / "data", n_train=30, n_test=2)
    module = tiny_lavin()
    dm = ScienceQADataModule(str(tmp_path / "data"), prompt_format="QCM-A", global_batch_size=8, image_size=32,
                             max_seq_len=200, tokenizer=module.tokenizer, length_buckets=True, bucket_pool=2)

    class RecordBatches(L.Callback):  # runs in the worker processes
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            with open(tmp_path / f"rank{trainer.global_rank}.jsonl", "a") as f:
                f.write(json.dumps(batch["pids"]) + "\n")

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[RecordBatches()])
    trainer.fit(module, datamodule=dm)
    ranks = [[json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    dm.setup("fit")
    samples = dm.datasets["train"].samples
    pid = {i: s.pid for i, s in enumerate(samples)}
    for rank in (0, 1):  # what the sampler deals to each process, step by step
        sampler = EpochShuffle(samples, 0, num_replicas=2, rank=rank, buckets=LengthBuckets(
            [len(s.input_ids) for s in samples], [s.image_path is not None for s in samples], 4, 2))
        expected = [[pid[i] for i in batch] for batch in batches_of(list(sampler), 4)]
        assert ranks[rank] == expected
    assert len(ranks[0]) == len(ranks[1])
