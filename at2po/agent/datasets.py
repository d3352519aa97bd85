"""QA datasets in the FlashRAG / Search-R1 shape -> ``QAExample``.

Accepted rows (JSONL, one object per line, or Parquet, one row per example)::

    {"question": str, "golden_answers": [str, ...] | str, "id"?: str|int, "data_source"?: str, ...}

``golden_answers`` may also come as ``answers`` / ``answer`` (plain QA dumps) or, in Search-R1's parquet files,
as ``reward_model.ground_truth.target``. Other fields (e.g. ``hops``, ``metadata``) are kept in
``QAExample.meta``. A row that cannot be read raises ``DatasetError`` naming ``file:line`` (JSONL) or
``file:row N`` (Parquet) and what was wrong.

Several files merge with per-source labels (the paper evaluates each benchmark separately):
``load_many(["nq=data/nq/test.jsonl", "data/hotpotqa/dev.jsonl"])``. ``prepare`` converts a local FlashRAG
layout ``<src>/<dataset>/{train,dev,test}.jsonl`` into our ``train.jsonl`` / ``test.jsonl``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from at2po.agent.env import QAExample
from at2po.errors import UserError

SPLIT_NAMES = frozenset({"train", "dev", "test", "val", "valid", "validation"})
_ANSWER_KEYS = ("golden_answers", "answers", "answer")
_KNOWN_KEYS = frozenset({"question", "id", "data_source", *_ANSWER_KEYS})


class DatasetError(UserError, ValueError):
    """A QA file or row that cannot be read; the message starts with ``file:line``."""


def _to_list(value: Any) -> Any:
    # Parquet gives numpy arrays for list columns when read through pandas; pyarrow's to_pylist gives lists.
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) and not isinstance(value, (str, bytes)) else value


def _golden(row: dict[str, Any]) -> Any:
    for key in _ANSWER_KEYS:
        if row.get(key) is not None:
            return _to_list(row[key])
    gt = (row.get("reward_model") or {}).get("ground_truth") if isinstance(row.get("reward_model"), dict) else None
    if isinstance(gt, dict) and gt.get("target") is not None:  # Search-R1 parquet
        return _to_list(gt["target"])
    return None


def row_to_example(row: Any, where: str, *, source: str | None, default_id: str) -> QAExample:
    """Validate one row and build its ``QAExample``; ``where`` ("file:line") prefixes every error."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(f"{where}: missing or empty 'question' (a non-empty string is required)")
    golden = _golden(row)
    if golden is None:
        raise DatasetError(f"{where}: missing 'golden_answers' (also accepted: answers, answer)")
    if isinstance(golden, (str, int, float)) and not isinstance(golden, bool):
        golden = [golden]
    if not isinstance(golden, list) or not golden:
        raise DatasetError(f"{where}: 'golden_answers' must be a non-empty list of strings, got {golden!r}")
    answers = [str(g).strip() for g in golden if g is not None and not isinstance(g, (list, dict))]
    if len(answers) != len(golden) or not all(answers):
        raise DatasetError(f"{where}: 'golden_answers' must hold non-empty strings, got {golden!r}")
    rid = row.get("id")
    label = source or row.get("data_source") or "default"
    meta = {k: _to_list(v) for k, v in row.items() if k not in _KNOWN_KEYS}
    return QAExample(
        question=question.strip(),
        golden_answers=answers,
        id=str(rid) if rid is not None and str(rid) != "" else default_id,
        data_source=str(label),
        meta=meta,
    )


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DatasetError(f"{path}: cannot read Parquet ({exc})") from None
    for i, row in enumerate(table.to_pylist(), 1):
        yield f"{path}:row {i}", row


def infer_source(path: Path) -> str:
    """Label of a file: its stem, or its folder's name for FlashRAG's ``<dataset>/<split>.jsonl``."""
    return path.parent.name if path.stem.lower() in SPLIT_NAMES and path.parent.name else path.stem


def read_rows(path: str | Path, limit: int | None = None) -> list[tuple[str, Any]]:
    """The rows of a JSONL (``.jsonl``/``.json``) or Parquet file as (``file:line``, row) pairs."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".parquet"):
        raise DatasetError(f"{path}: unsupported extension {suffix!r} (use .jsonl or .parquet)")
    rows = _jsonl_rows(path) if suffix != ".parquet" else _parquet_rows(path)
    out: list[tuple[str, Any]] = []
    for where, row in rows:
        if limit is not None and len(out) >= limit:
            break
        out.append((where, row))
    return out


def load_qa(path: str | Path, source: str | None = None, *, limit: int | None = None) -> list[QAExample]:
    """Read one JSONL (``.jsonl``/``.json``) or Parquet (``.parquet``) file of QA rows.

    ``source`` overrides each row's ``data_source``; rows without either get ``infer_source(path)``. Ids default
    to ``"<source>-<n>"`` (n = 0-based row index). An id seen earlier in the file is prefixed with its source
    (``"nq/train_0"``); a duplicate within one source is an error.
    """
    path = Path(path)
    rows = read_rows(path, limit)
    fallback = infer_source(path)
    out: list[QAExample] = []
    seen: dict[str, str] = {}  # id -> where
    seen_in_source: dict[tuple[str, str], str] = {}  # (source, original id) -> where
    for n, (where, row) in enumerate(rows):
        ex = row_to_example(row, where, source=source, default_id="")
        if source is None and not (isinstance(row, dict) and row.get("data_source")):
            ex.data_source = fallback
        if not ex.id:
            ex.id = f"{ex.data_source}-{n}"
        key = (ex.data_source, ex.id)
        if key in seen_in_source:
            first = seen_in_source[key]
            raise DatasetError(f"{where}: duplicate id {ex.id!r} in source {ex.data_source!r} (first at {first})")
        seen_in_source[key] = where
        if ex.id in seen:  # merged files (Search-R1's nq+hotpotqa parquet) reuse ids across sources
            ex.id = f"{ex.data_source}/{ex.id}"
        seen[ex.id] = where
        out.append(ex)
    return out


def parse_spec(spec: str | Path) -> tuple[str | None, Path]:
    """``"label=path"`` -> (label, path); a bare path -> (None, path)."""
    text = str(spec)
    if "=" in text and not Path(text).exists():
        label, _, p = text.partition("=")
        if label and p:
            return label, Path(p)
    return None, Path(text)


def load_many(specs: Sequence[str | Path], *, limit_per_source: int | None = None) -> list[QAExample]:
    """Load and concatenate several files (``"label=path"`` or a path), each row labelled with its source.

    Ids are made unique across files by prefixing the source when two files share an id.
    """
    merged: list[QAExample] = []
    ids: set[str] = set()
    for spec in specs:
        label, path = parse_spec(spec)
        for ex in load_qa(path, label, limit=limit_per_source):
            if ex.id in ids:
                ex.id = f"{ex.data_source}/{ex.id}"
            if ex.id in ids:
                raise DatasetError(f"{path}: id {ex.id!r} occurs in an earlier file of the same source")
            ids.add(ex.id)
            merged.append(ex)
    return merged


def shuffle_examples(examples: Sequence[QAExample], seed: int = 0) -> list[QAExample]:
    """A deterministic permutation (``random.Random(seed)``): same input order + seed -> same output."""
    out = list(examples)
    random.Random(seed).shuffle(out)
    return out


def split_examples(
    examples: Sequence[QAExample], test_size: float | int, *, seed: int = 0
) -> tuple[list[QAExample], list[QAExample]]:
    """Shuffle deterministically, then cut: ``test_size`` is a fraction in (0, 1) or a count. Returns (train, test)."""
    n = len(examples)
    if isinstance(test_size, float) and not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size fraction must be in (0, 1), got {test_size}")
    n_test = round(n * test_size) if isinstance(test_size, float) else int(test_size)
    if not 0 <= n_test <= n:
        raise ValueError(f"test_size={test_size} selects {n_test} of {n} examples")
    shuffled = shuffle_examples(examples, seed)
    return shuffled[n_test:], shuffled[:n_test]


def example_to_row(ex: QAExample) -> dict[str, Any]:
    """The JSONL row written for an example (inverse of ``row_to_example``; ``meta`` fields are flattened in)."""
    row: dict[str, Any] = {"id": ex.id, "question": ex.question, "golden_answers": ex.golden_answers}
    row["data_source"] = ex.data_source
    row.update({k: v for k, v in ex.meta.items() if k not in row})
    return row


def save_qa(examples: Iterable[QAExample], path: str | Path) -> Path:
    """Write examples as JSONL (or Parquet when ``path`` ends in ``.parquet``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [example_to_row(ex) for ex in examples]
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        write_jsonl(path, rows)
    return path


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """One JSON object per line, UTF-8 (non-ASCII kept as is)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@dataclass
class PrepareResult:
    train: Path | None
    test: Path | None
    counts: dict[str, dict[str, int]]  # split -> source -> rows


def _split_file(src: Path, name: str, split: str) -> Path | None:
    for ext in (".jsonl", ".parquet"):
        p = src / name / f"{split}{ext}"
        if p.is_file():
            return p
    return None


def prepare(
    src: str | Path,
    out: str | Path,
    *,
    train_sources: Sequence[str] | None = None,
    test_sources: Sequence[str] | None = None,
    max_test_per_source: int | None = None,
    seed: int = 0,
) -> PrepareResult:
    """Convert a FlashRAG-layout directory ``<src>/<dataset>/{train,dev,test}.jsonl|.parquet`` into
    ``<out>/train.jsonl`` (the ``train`` split of each train source, shuffled with ``seed``) and
    ``<out>/test.jsonl`` (per test source its ``test`` split, else ``dev``, as Search-R1 does; optionally a
    deterministic sample of ``max_test_per_source``), every row labelled with its dataset name, plus
    ``<out>/manifest.json`` with the counts and the files used. Sources default to every dataset folder."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a directory (expected <src>/<dataset>/<split>.jsonl)")
    names = sorted(p.name for p in src.iterdir() if p.is_dir())
    for role, wanted in (("train", train_sources), ("test", test_sources)):
        for name in wanted or ():
            if name not in names:
                raise DatasetError(f"{src}: no dataset folder {name!r} for --{role}-sources (have {names})")
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    files: dict[str, dict[str, str]] = {"train": {}, "test": {}}
    train: list[QAExample] = []
    for name in train_sources or names:
        path = _split_file(src, name, "train")
        if path is None:
            if train_sources:
                raise DatasetError(f"{src / name}: no train.jsonl or train.parquet")
            continue
        rows = load_qa(path, name)
        train.extend(rows)
        counts["train"][name], files["train"][name] = len(rows), str(path)
    test: list[QAExample] = []
    for name in test_sources or names:
        path = _split_file(src, name, "test") or _split_file(src, name, "dev")
        if path is None:
            if test_sources:
                raise DatasetError(f"{src / name}: no test or dev split")
            continue
        rows = load_qa(path, name)
        if max_test_per_source is not None and len(rows) > max_test_per_source:
            rows = shuffle_examples(rows, seed)[:max_test_per_source]
        test.extend(rows)
        counts["test"][name], files["test"][name] = len(rows), str(path)
    if not train and not test:
        raise DatasetError(f"{src}: found no <dataset>/<split>.jsonl files")
    out.mkdir(parents=True, exist_ok=True)
    train_path = save_qa(shuffle_examples(train, seed), out / "train.jsonl") if train else None
    test_path = save_qa(test, out / "test.jsonl") if test else None
    manifest = {"src": str(src), "seed": seed, "counts": counts, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return PrepareResult(train=train_path, test=test_path, counts=counts)


def source_counts(examples: Iterable[QAExample]) -> dict[str, int]:
    """Number of examples per ``data_source``."""
    return dict(Counter(ex.data_source for ex in examples))
