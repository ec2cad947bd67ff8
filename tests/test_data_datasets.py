"""Local / hub evaluation datasets and nanotron-compatible sample selection (infini_jax.data.datasets)."""

import logging
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infini_jax.data.datasets import load_eval_dataset, resolve_dataset_source, select_samples

DEPTHS = [0, 25, 50, 75, 100]


def _rows_1k():
    """The llama3-1024 schema: num_shots and num_digits columns, int answers and depths."""
    rows = []
    for d in DEPTHS:
        for shots in (0, 1):
            for digits in (2, 3):
                for k in range(4):
                    rows.append(
                        dict(
                            id=f"1k-{d}-{shots}-{digits}-{k}",
                            prompt=f"prompt {d} {shots} {digits} {k}",
                            answer=10 ** (digits - 1) + k,
                            context_length=1024,
                            token_count=1000 + k,
                            num_shots=shots,
                            num_digits=digits,
                            depth_percent=d,
                        )
                    )
    return rows


def _rows_16k():
    """The llama3-16k schema: no num_shots / num_digits."""
    return [
        dict(
            id=100 * d + i,
            prompt=f"long prompt {d} {i}",
            answer=1000 + i,
            context_length=16384,
            num_tokens=16000 - i,
            depth_percent=d,
        )
        for d in DEPTHS
        for i in range(6)
    ]


def _rows_needle():
    """simple_needle_in_a_hay_stack: float depths from np.linspace, several context lengths."""
    return [
        dict(
            id=f"n-{c}-{j}-{i}",
            prompt=f"needle {c} {d} {i}",
            answer=7 + i,
            context_length=c,
            depth_percent=float(d),
        )
        for c in (1024, 2048)
        for j, d in enumerate(np.linspace(0, 100, 21))
        for i in range(3)
    ]


def _write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "hf_cache")


# ----------------------------------------------------------------------------- sources


def test_resolve_sources(tmp_path):
    f = _write(tmp_path / "one" / "x.parquet", _rows_16k())
    assert resolve_dataset_source(f) == ("parquet", [f])
    assert resolve_dataset_source(tmp_path / "one") == ("parquet", [f])
    g = _write(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet", _rows_16k())
    _write(tmp_path / "repo" / "data" / "test-00000-of-00001.parquet", _rows_16k())
    assert resolve_dataset_source(tmp_path / "repo") == ("parquet", [g])
    datasets.Dataset.from_list(_rows_16k()).save_to_disk(str(tmp_path / "saved"))
    assert resolve_dataset_source(tmp_path / "saved") == ("save_to_disk", str(tmp_path / "saved"))
    assert resolve_dataset_source("nanotron/llama3-16k-passkey-retrieval-eval", cwd=tmp_path) == (
        "hub",
        "nanotron/llama3-16k-passkey-retrieval-eval",
    )
    with pytest.raises(ValueError, match="does not exist"):
        resolve_dataset_source(str(tmp_path / "missing.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.parquet"):
        resolve_dataset_source(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .parquet"):
        resolve_dataset_source(tmp_path / "notes.txt")


def test_autodetect_local_copy_of_hub_name(tmp_path, monkeypatch, cache):
    _write(tmp_path / "llama3-1024-passkey-retrieval-eval" / "train-00000-of-00001.parquet", _rows_1k())
    monkeypatch.chdir(tmp_path)
    kind, files = resolve_dataset_source("nanotron/llama3-1024-passkey-retrieval-eval")
    assert kind == "parquet"
    assert files == [os.path.join(".", "llama3-1024-passkey-retrieval-eval", "train-00000-of-00001.parquet")]
    ds = load_eval_dataset("nanotron/llama3-1024-passkey-retrieval-eval", cache_dir=cache)
    assert len(ds) == len(_rows_1k())
    assert {"num_shots", "num_digits", "token_count"} <= set(ds.column_names)


def test_load_all_kinds(tmp_path, cache):
    f = _write(tmp_path / "a.parquet", _rows_16k())
    assert len(load_eval_dataset(f, cache_dir=cache)) == 30
    datasets.Dataset.from_list(_rows_needle()).save_to_disk(str(tmp_path / "saved"))
    assert len(load_eval_dataset(tmp_path / "saved")) == len(_rows_needle())
    datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows_16k())}).save_to_disk(
        str(tmp_path / "dd")
    )
    assert len(load_eval_dataset(tmp_path / "dd")) == 30
    with pytest.raises(ValueError, match="splits"):
        load_eval_dataset(tmp_path / "dd", split="test")


def test_missing_required_columns(tmp_path, cache):
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in _rows_16k()]
    f = _write(tmp_path / "bad.parquet", rows)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['answer'\].*found \['id', 'prompt'"):
        load_eval_dataset(f, cache_dir=cache)
    ds = datasets.Dataset.from_list([{"text": "x", "answer": 1}])
    with pytest.raises(ValueError, match=r"\['prompt'\]"):
        select_samples(ds, dataset_name="bad")


# ----------------------------------------------------------------------------- selection


def test_select_1k_filters_like_nanotron():
    ds = datasets.Dataset.from_list(_rows_1k())
    s = select_samples(
        ds, depths=[0, 50], num_shots=1, num_digits=3, num_samples=3, seed=42, dataset_name="1k"
    )
    assert len(s) == 6
    assert all(x.num_shots == 1 and x.num_digits == 3 for x in s)
    assert [x.depth_percent for x in s] == [0.0] * 3 + [50.0] * 3
    # Same rows, same order as nanotron's filter -> shuffle(seed) -> select(range(n)).
    ref = ds.filter(lambda r: r["depth_percent"] == 50 and r["num_shots"] == 1 and r["num_digits"] == 3)
    ref = ref.shuffle(seed=42).select(range(3))
    assert [x.id for x in s[3:]] == ref["id"]
    first = s[0]
    assert isinstance(first.answer, str) and first.answer.isdigit() and first.input_ids is None
    assert first.prompt.startswith("prompt 0 1 3") and first.context_length == 1024
    assert first.extra["token_count"] >= 1000 and first.dataset == "1k"
    # num_digits=0 keeps every digit count; num_shots=None keeps every shot count.
    assert len(select_samples(ds, depths=[25], num_shots=0, num_digits=0, dataset_name="1k")) == 8
    assert len(select_samples(ds, depths=[25], dataset_name="1k")) == 16
    # depths=None: every depth of the dataset, num_samples per depth.
    assert len(select_samples(ds, num_samples=2, dataset_name="1k")) == 2 * len(DEPTHS)


def test_select_16k_skips_missing_columns():
    ds = datasets.Dataset.from_list(_rows_16k())
    s = select_samples(ds, depths=DEPTHS, num_shots=0, num_digits=4, num_samples=4, dataset_name="16k")
    assert len(s) == 4 * len(DEPTHS)
    assert all(x.num_shots is None and x.num_digits is None for x in s)
    assert s[0].id.isdigit() and s[0].answer.startswith("100")
    assert s[0].extra["num_tokens"] <= 16000


def test_select_needle_float_depths_and_context_filter():
    ds = datasets.Dataset.from_list(_rows_needle())
    s = select_samples(ds, depths=[5, 15.0000000001], context_length=2048, dataset_name="needle")
    assert len(s) == 6 and all(x.context_length == 2048 for x in s)
    assert sorted({x.depth_percent for x in s}) == [5.0, 15.0]


def test_select_reproducible_and_seeded():
    ds = datasets.Dataset.from_list(_rows_16k())

    def ids(seed):
        return [x.id for x in select_samples(ds, depths=DEPTHS, num_samples=4, seed=seed, dataset_name="16k")]

    assert ids(42) == ids(42)
    assert ids(42) != ids(1)


def test_select_warns_and_needs_depth_column(caplog):
    ds = datasets.Dataset.from_list(_rows_16k())
    with caplog.at_level(logging.WARNING):
        assert select_samples(ds, depths=[33], dataset_name="16k") == []
    assert "no rows at depth_percent=33" in caplog.text
    nodepth = ds.remove_columns(["depth_percent", "id"])
    with pytest.raises(ValueError, match="no depth_percent column"):
        select_samples(nodepth, depths=[0], dataset_name="x")
    a = select_samples(nodepth, num_samples=5, dataset_name="x")
    b = select_samples(nodepth, num_samples=5, dataset_name="x")
    assert len(a) == 5 and [x.id for x in a] == [x.id for x in b]
    assert len({x.id for x in select_samples(nodepth, dataset_name="x")}) == 30
