"""verify-dataset decodes every sample, knows every layout, exits non-zero on a problem, writes JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from densemtl.cli import main
from densemtl.data.nyud import write_nyud_sample, write_split
from densemtl.data.synthetic import generate_synth_nyud, generate_synth_pascal
from densemtl.data.verify import verify

H, W = 6, 8


@pytest.fixture
def nyud_root(tmp_path: Path) -> Path:
    """A tiny `nyud` layout: train a, b, c; val d."""
    rng = np.random.default_rng(0)
    root = tmp_path / "NYUDv2"
    for split, names in (("train", ["a", "b", "c"]), ("val", ["d"])):
        for n in names:
            write_nyud_sample(
                root,
                n,
                rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
                rng.integers(0, 40, (H, W)),
                rng.uniform(0.5, 5.0, (H, W)),
                np.tile([0.0, 0.0, -1.0], (H, W, 1)),
                np.zeros((H, W)),
            )
        write_split(root, split, names)
    return root


def test_a_corrupt_sample_after_the_first_is_found_and_fails_the_command(nyud_root: Path, capsys) -> None:
    (nyud_root / "images" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    report = verify(nyud_root, progress=False)
    assert not report.ok and report.splits[0].checked == 3 and report.splits[0].failed == 1
    assert "split 'train': 1 of 3 samples cannot be read" in report.errors
    assert any("images/c.png" in e for e in report.errors)  # the file is named
    assert main(["verify-dataset", str(nyud_root), "--progress", "false"]) == 1
    assert "FAILED" in capsys.readouterr().out
    # --quick: the old first-sample check passes (every file exists), and says it was quick
    assert main(["verify-dataset", str(nyud_root), "--quick", "true", "--progress", "false"]) == 0
    assert "quick: first sample only" in capsys.readouterr().out


def test_every_sample_is_checked_with_the_readers_strict_decoding(nyud_root: Path) -> None:
    np.save(nyud_root / "depth" / "b.npy", np.full((H, W), 2500, np.uint16))  # millimetres, not metres
    report = verify(nyud_root, progress=False)
    assert not report.ok and any("depth/b.npy" in e and "integers" in e for e in report.errors)
    with_workers = verify(nyud_root, progress=False, workers=2)
    assert with_workers.to_dict() == report.to_dict()


def test_json_on_stdout_and_report_file(nyud_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "reports" / "nyud.json"
    assert main(["verify-dataset", str(nyud_root), "--json", "true", "--report", str(out), "--progress", "false"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert printed["ok"] is True and printed["quick"] is False
    assert [(s["split"], s["samples"], s["checked"]) for s in printed["splits"]] == [("train", 3, 3), ("val", 1, 1)]
    assert any("the standard split has 795" in w for w in printed["warnings"])
    # --strict: the same warnings (counts differ from the release) fail the command
    assert main(["verify-dataset", str(nyud_root), "--strict", "true", "--progress", "false"]) == 1


def test_not_a_dataset_is_a_failed_report(tmp_path: Path, capsys) -> None:
    assert main(["verify-dataset", str(tmp_path), "--json", "true", "--progress", "false"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and "PASCAL-Context" in report["errors"][0] and "NYUD-v2" in report["errors"][0]


def test_synthetic_sets_are_checked_against_their_generator_record(tmp_path: Path) -> None:
    root = generate_synth_nyud(tmp_path / "synth", train=2, val=1, size=(16, 16))
    report = verify(root, progress=False)
    assert report.ok and report.dataset == "synth-nyud" and report.warnings == []
    assert [(s.samples, s.expected, s.image_size) for s in report.splits] == [(2, 2, (16, 16)), (1, 1, (16, 16))]
    train = root / "gt_sets" / "train.txt"
    train.write_text(train.read_text().split()[0] + "\n")  # a sample lost after generation
    report = verify(root, progress=False)
    assert not report.ok and "split 'train' has 1 samples, the standard split has 2" in report.errors


def test_pascal_context_layout_counts_and_test_new(tmp_path: Path, capsys) -> None:
    root = generate_synth_pascal(tmp_path / "PASCAL_MT", train=2, val=2, size=(24, 32))
    (root / "generator.json").unlink()  # now an ordinary PASCAL-Context folder
    report = verify(root, progress=False, cache_dir=str(tmp_path / "cache"))
    assert report.ok and report.dataset == "pascal"
    assert [(s.split, s.samples, s.expected, s.checked) for s in report.splits] == [
        ("train", 2, 4998, 2),
        ("val", 2, 5105, 2),
    ]
    assert any("test_new" in n for n in report.notes)
    val = (root / "ImageSets" / "Context" / "val.txt").read_text().split()
    (root / "ImageSets" / "Context" / "test_new.txt").write_text(f"{val[0]}\nnot_in_val\n")
    report = verify(root, progress=False, cache_dir=str(tmp_path / "cache"))
    assert not report.ok and any("1 id(s) that are not in val" in e for e in report.errors)
    assert "test_new has 2 ids, the standard list has 2498" in report.warnings
