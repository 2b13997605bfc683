"""A split's metrics carry the class names in confusion-matrix index order (`class_names`): clients must not take
the order from the keys of `per_class`, which JavaScript reorders when class names look like integers (an
ImageFolder with folders 9 and 10 sorts them as strings, "10" first, while Object.keys lists "9" first)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from app.ml.data import scan_imagefolder
from app.ml.metrics import MetricAccumulator, summarize_confusion


def test_an_imagefolder_with_numeric_class_folders_sorts_them_as_strings(tmp_path: Path):
    for name in ("9", "10", "2"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.png")
    assert scan_imagefolder(tmp_path).class_names == ["10", "2", "9"]  # index order; not numeric order


def test_class_names_are_the_index_order_of_the_confusion_matrix_and_survive_json():
    names = ["10", "2", "9", "cat"]  # as scan_imagefolder orders them
    # Each class a different support (row sum), so a row read under the wrong name would show.
    targets = torch.tensor([0] * 1 + [1] * 2 + [2] * 3 + [3] * 4)
    predicted = torch.tensor([0] + [1, 2] + [2, 2, 0] + [3, 3, 3, 1])
    acc = MetricAccumulator(4)
    acc.update(torch.nn.functional.one_hot(predicted, 4).float(), targets, 0.0)
    summary = json.loads(json.dumps(acc.summary(names)))  # as stored (a JSON column) and served

    assert summary["class_names"] == names
    matrix = summary["confusion_matrix"]
    assert matrix == [[1, 0, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 1, 0, 3]]
    for i, name in enumerate(summary["class_names"]):
        assert summary["per_class"][name]["support"] == sum(matrix[i]) == i + 1
        assert summary["per_class"][name]["recall"] == matrix[i][i] / (i + 1)
        assert summary["per_class"][name]["precision"] == matrix[i][i] / sum(row[i] for row in matrix)


def test_class_names_is_a_copy_of_the_callers_list():
    names = ["b", "a"]
    summary = summarize_confusion(torch.tensor([[1, 0], [0, 1]]), names, None, 0, 2)
    names.reverse()
    assert summary["class_names"] == ["b", "a"]
