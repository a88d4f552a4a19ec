"""training.error_breakdown: boundary distances, majority votes, and its scores against the evaluator's."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lsmseg.model import load_checkpoint
from lsmseg.training.datasets.synthetic import SEEN_CLASSES, SyntheticScenes
from lsmseg.training.error_breakdown import ObjectHits, boundary_distance, breakdown, main, majority_vote
from lsmseg.training.evaluate import EvaluationOptions, evaluate_dataset

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "demo.safetensors"


def test_boundary_distance_counts_chessboard_steps_from_the_pixels_that_touch_another_label() -> None:
    label = np.zeros((7, 7), np.int64)
    label[3, 3] = 1  # one pixel of another class: it and its 4-neighbours touch a different label
    label[6, 0] = 2  # and one in a corner
    distance = boundary_distance(label, limit=2)
    edges = [(3, 3), (2, 3), (4, 3), (3, 2), (3, 4), (6, 0), (5, 0), (6, 1)]
    expected = np.array(
        [[min(3, *(max(abs(y - ey), abs(x - ex)) for ey, ex in edges)) for x in range(7)] for y in range(7)]
    )
    assert expected[0, 0] == 3 and expected[1, 2] == 1 and expected[6, 6] == 3  # the cap, and a diagonal step
    np.testing.assert_array_equal(distance, expected)
    assert (boundary_distance(np.zeros((4, 4), np.int64), limit=3) == 4).all()  # no boundary anywhere


def test_majority_vote_gives_each_instance_its_most_common_prediction() -> None:
    instances = np.array([[1, 1, 1, 2], [1, 1, 2, 2]])
    prediction = np.array([[5, 5, 0, 3], [5, 4, 3, 1]])
    np.testing.assert_array_equal(majority_vote(prediction, instances, 6), [[5, 5, 5, 3], [5, 5, 3, 3]])


def test_object_hits_count_each_visible_object_under_each_of_its_attributes() -> None:
    scenes = SyntheticScenes("test", num_images=6)
    classes = list(scenes.classes)
    perfect, one_wrong = ObjectHits(), ObjectHits()
    wrong_object, wrong_pixels, total_pixels, total_objects = None, 0, 0, 0
    for index in range(len(scenes)):
        sample = scenes[index]
        prediction = sample.label.astype(np.int64)
        perfect.update(sample, prediction, classes)
        first_object_id = len(sample.scene.stuff) + 1
        for offset, obj in enumerate(sample.scene.objects):
            visible = sample.instances == first_object_id + offset
            total_pixels += int(visible.sum())
            total_objects += int(visible.any())
            if wrong_object is None and visible.any():
                wrong_object, wrong_pixels = obj, int(visible.sum())
                prediction = np.where(visible, classes.index("sky"), prediction)
        one_wrong.update(sample, prediction, classes)
    assert wrong_object is not None
    for name, values in perfect.summary().items():
        # Every object is counted once under one value of each attribute, and every pixel got its class.
        assert sum(tally["objects"] for tally in values.values()) == total_objects
        assert sum(tally["pixels"] for tally in values.values()) == total_pixels
        assert all(tally["exact"] == 1.0 for tally in values.values())
        wrong = one_wrong.summary()[name]
        value = getattr(wrong_object, name)
        expected = 1 - wrong_pixels / values[value]["pixels"]
        assert wrong[value]["exact"] == pytest.approx(expected)
        assert all(wrong[other]["exact"] == 1.0 for other in wrong if other != value)


def test_breakdown_of_the_demo_checkpoint_matches_the_evaluator_and_writes_json(tmp_path, capsys) -> None:
    torch.set_num_threads(2)
    model = load_checkpoint(DEMO)
    scenes = SyntheticScenes("test", num_images=4)
    result = breakdown(model, scenes, progress=False)
    options = EvaluationOptions(prompts="bank", sliding_window=True, batch_size=4)
    evaluated = evaluate_dataset(
        model, scenes, "synthetic-test", options, seen_names=SEEN_CLASSES, device="cpu"
    )
    scores = result["scores"]
    assert scores["all"]["mIoU_seen"] == pytest.approx(evaluated["mIoU_seen"], abs=1e-9)
    assert scores["all"]["pAcc"] == pytest.approx(evaluated["pAcc"], abs=1e-9)
    assert result["views"] == evaluated["views"]
    kept = result["kept_pixels"]
    assert 4 * 128 * 128 > kept["1"] > kept["2"] > kept["3"] > 0
    # The pixels next to boundaries are the hard ones: leaving them out scores higher, more so the wider.
    assert scores["all"]["mIoU_seen"] < scores["1"]["mIoU_seen"] < scores["3"]["mIoU_seen"]
    assert scores["all"]["pAcc"] < scores["3"]["pAcc"] <= 1
    shapes = result["objects"]["shape"]
    assert set(shapes) <= {"circle", "cross", "ring", "square", "star", "triangle"}
    assert all(0 <= tally["exact"] <= 1 and tally["pixels"] > 0 for tally in shapes.values())

    output = tmp_path / "breakdown.json"
    main([str(DEMO), "--images", "2", "--output", str(output)])
    written = json.loads(output.read_text())
    assert written["images"] == 2 and written["checkpoint"] == str(DEMO)
    assert set(written["scores"]) == {"all", "1", "2", "3", "majority"}
    assert set(written["objects"]) == {"size", "fill", "shape", "colour"}
    assert f"{100 * written['scores']['majority']['mIoU_seen']:.1f}" in capsys.readouterr().out
