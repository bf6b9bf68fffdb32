"""Mistake ranking for the eval gallery."""

from __future__ import annotations

import numpy as np

from actionrec.engine.metrics import confident_mistakes, format_per_class


def test_confident_mistakes_are_wrong_predictions_by_descending_score():
    scores = np.array([[0.9, 0.1, 0.0],   # right
                       [0.2, 0.7, 0.1],   # wrong, 0.7
                       [0.1, 0.1, 0.8],   # wrong, 0.8
                       [0.05, 0.9, 0.05],  # right
                       [0.6, 0.3, 0.1],   # wrong, 0.6
                       [0.1, 0.2, 0.7]])  # wrong, 0.7 (tie with row 1: row order kept)
    labels = np.array([0, 0, 1, 1, 2, 1])
    assert confident_mistakes(scores, labels, 3) == [(2, 2, 0.8), (1, 1, 0.7), (5, 2, 0.7)]
    assert [r for r, _, _ in confident_mistakes(scores, labels, 10)] == [2, 1, 5, 4]
    assert confident_mistakes(scores[[0, 3]], labels[[0, 3]], 5) == []
    assert confident_mistakes(np.zeros((0, 3)), np.zeros(0, int), 5) == []


def test_per_class_line_keeps_class_order_and_shows_the_lowest_past_the_limit():
    accs = {"PanLeft": 0.921, "PanRight": 0.75, "ZoomIn": 1.0}
    assert format_per_class(accs) == "PanLeft 0.92 | PanRight 0.75 | ZoomIn 1.00"
    many = {f"c{i:03d}": (i * 37 % 101) / 100 for i in range(101)}
    line = format_per_class(many, limit=3)
    assert line == "3 lowest of 101: c000 0.00 | c071 0.01 | c041 0.02"
    assert format_per_class({}) == ""
