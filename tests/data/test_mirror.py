"""data.mirror_pairs: training clips flipped left-right take the label their mirror image has."""

from __future__ import annotations

import pytest
import torch

from actionrec import build
from actionrec.config import ConfigError, load_config
from actionrec.data.mirror import MIRROR_SELF_SCORE, Mirror, flip_frames, mirror_labels, mirror_report, self_scores
from actionrec.data.splits import load_split


def test_mirror_flips_swaps_twins_keeps_own_class_and_is_deterministic():
    mirror = Mirror([(0, 1), (2, 2)], flip_frames, prob=0.5, seed=7)
    clip = torch.arange(12.0).view(1, 1, 3, 4)  # (T, C, H, W)
    outcomes = {0: 0, 1: 0}
    for index in range(200):
        out, label = mirror(clip, 0, epoch=0, index=index)
        if label == 1:  # flipped along the width: column j holds what column W-1-j held
            assert torch.equal(out[..., 0], clip[..., 3]) and torch.equal(out, clip.flip(-1))
        else:
            assert label == 0 and torch.equal(out, clip)
        outcomes[label] += 1
        again, label2 = Mirror([(0, 1), (2, 2)], flip_frames, prob=0.5, seed=7)(clip, 0, 0, index)
        assert label2 == label and torch.equal(again, out)
    assert 70 <= outcomes[1] <= 130, outcomes  # p = 0.5 of 200
    # [C, C]: flipped, label kept; a class not named: never flipped.
    own = [mirror(clip, 2, 0, i) for i in range(50)]
    assert {lab for _, lab in own} == {2} and any(torch.equal(c, clip.flip(-1)) for c, _ in own)
    assert all(torch.equal(mirror(clip, 3, 0, i)[0], clip) and mirror(clip, 3, 0, i)[1] == 3 for i in range(50))
    # The draw differs from data.reverse_pairs' for the same (seed, epoch, item): the two are independent.
    from actionrec.data.reversal import TimeReversal

    rev = TimeReversal([(0, 1)], prob=0.5, seed=7)
    same = sum(rev(clip, 0, 0, i)[1] == mirror(clip, 0, 0, i)[1] for i in range(200))
    assert same < 150
    with pytest.raises(ValueError, match="class 1 is in two mirror pairs"):
        Mirror([(0, 1), (1, 2)], flip_frames)
    with pytest.raises(ValueError, match=r"mirror probability must be in \[0, 1\]"):
        Mirror([(0, 1)], flip_frames, prob=1.5)


def test_expected_counts_compose_with_reversal_in_the_loss_prior():
    mirror = Mirror([(0, 1), (2, 2)], flip_frames, prob=0.5)
    assert mirror.expected_counts([30, 10, 5, 7]) == [20.0, 20.0, 5.0, 7.0]
    # Reversal pairs 1/2, mirror pairs 0/1, each with p = 0.5: reversal first, then mirroring.
    cfg = load_config(None, ["data.reverse_pairs=[[b, c]]", "data.mirror_pairs=[[a, b], [c, c]]", "data.hflip=false",
                             "loss.name=ce", "loss.alpha=null", "loss.logit_adjust=1.0"])
    loss = build.loss_from(cfg, [0] * 40 + [1] * 8 + [2] * 24, ["a", "b", "c"])
    after_rev = [40.0, 16.0, 16.0]
    after_mirror = [28.0, 28.0, 16.0]
    assert build._expected_counts([build.reversal_from(cfg, "abc"), build.mirror_from(cfg, "abc")], [40, 8, 24]) == after_mirror
    prior = torch.tensor(after_mirror) / sum(after_mirror)
    torch.testing.assert_close(loss.logit_shift, prior.log().to(loss.logit_shift.dtype), rtol=1e-5, atol=1e-6)
    assert after_rev != after_mirror


def test_names_and_conflicts_are_checked():
    cfg = load_config(None, ["data.mirror_pairs=[[A, Z]]", "data.hflip=false"])
    with pytest.raises(ConfigError, match="data.mirror_pairs: class 'Z' is not in the dataset"):
        build.mirror_from(cfg, ["A", "B"])
    with pytest.raises(ConfigError, match="one pair only"):
        load_config(None, ["data.mirror_pairs=[[A, B], [B, B]]", "data.hflip=false"])
    with pytest.raises(ConfigError, match=r"data.hflip=True: cannot be used with data.mirror_pairs"):
        load_config(None, ["data.mirror_pairs=[[A, B]]", "data.hflip=true"])
    with pytest.raises(ConfigError, match=r"data.mirror_prob=2.0: must be in \[0, 1\]"):
        load_config(None, ["data.mirror_prob=2"])
    with pytest.raises(ConfigError, match="data.mirror_pairs='auto': needs train.cache_features=true"):
        load_config(None, ["data.mirror_pairs=auto", "data.hflip=false"])
    assert build.mirror_from(load_config(None, []), ["A"]) is None  # off by default


def test_mirror_labels_from_what_the_scouts_say():
    # P[a][b]: the scouts' softmax for b on a's mirrored clips. 0 and 1 swap (a pan left and right), 2
    # looks the same mirrored, 3 looks like nothing they know (spread out), 4 mostly like 0 one way only,
    # 5 (a rare entry) is called itself a third of the time mirrored: over the 0.25 bar, flipped as it is.
    said = torch.tensor([[0.05, 0.90, 0.02, 0.01, 0.01, 0.01],
                         [0.80, 0.10, 0.05, 0.03, 0.01, 0.01],
                         [0.01, 0.02, 0.95, 0.01, 0.00, 0.01],
                         [0.22, 0.22, 0.20, 0.20, 0.12, 0.04],
                         [0.75, 0.05, 0.05, 0.05, 0.10, 0.00],
                         [0.10, 0.05, 0.30, 0.15, 0.05, 0.35]], dtype=torch.float64)
    assert MIRROR_SELF_SCORE == 0.25
    assert mirror_labels(said) == [(0, 1), (2, 2), (5, 5)]
    assert mirror_labels(said, self_score=0.5) == [(0, 1), (2, 2)]  # the bar before: the entry left out
    text = mirror_report([(0, 1), (2, 2), (5, 5)], said, ["L", "R", "Up", "Odd", "Half", "Enter"])
    assert text.startswith("L/R (0.85); 2 of 6 classes flipped as they are (itself 0.35-0.95, lowest Enter); never flipped: Odd "
                           "(itself 0.20), Half (itself 0.10)")


def test_time_reversed_twins_pool_their_mirror_self_scores():
    # 0 (Enter, 30 clips) looks like itself mirrored (0.80); its time-reversed twin 1 (Exit, 6 clips)
    # scored 0.15 for itself: an exit mirrored is an exit when an entry mirrored is an entry, and the
    # rare class's score is the noisier one. 2 and 3 swap (a pan left and right, also time twins).
    said = torch.tensor([[0.80, 0.10, 0.05, 0.05],
                         [0.70, 0.15, 0.10, 0.05],
                         [0.02, 0.03, 0.05, 0.90],
                         [0.01, 0.04, 0.85, 0.10]], dtype=torch.float64)
    counts, twins = [30, 6, 20, 20], [(0, 1), (2, 3)]
    itself = self_scores(said, counts, twins)
    torch.testing.assert_close(itself[:2], torch.full((2,), (30 * 0.80 + 6 * 0.15) / 36, dtype=torch.float64))
    torch.testing.assert_close(itself[2:], torch.full((2,), 0.075, dtype=torch.float64))
    torch.testing.assert_close(self_scores(said), said.diagonal())  # no twins: P[a][a] as it is
    torch.testing.assert_close(self_scores(said, None, [(0, 1)])[:2], torch.full((2,), 0.475, dtype=torch.float64))
    assert mirror_labels(said) == [(0, 0), (2, 3)]  # alone, Exit would never be flipped
    assert mirror_labels(said, itself=itself) == [(0, 0), (1, 1), (2, 3)]
    # Pooling works both ways: a rare class's high score does not outvote its common twin's low one.
    low = said.clone()
    low[0, 0], low[1, 1] = 0.10, 0.90  # pooled (30 * 0.10 + 6 * 0.90) / 36 = 0.23, under the bar
    assert mirror_labels(low, itself=self_scores(low, counts, twins)) == [(2, 3)]
    text = mirror_report([(0, 0), (1, 1), (2, 3)], said, ["Enter", "Exit", "L", "R"], itself=itself)
    assert text == "L/R (0.88); 2 of 4 classes flipped as they are (itself 0.69-0.69, lowest Enter, Exit)"


def test_video_dataset_flips_the_same_augmented_frames(tiny_dataset):
    from tests.helpers import count_swapped_items

    split = load_split(tiny_dataset)
    classes = list(split.classes)
    mirror = Mirror([(0, 1)], flip_frames, prob=0.5, seed=3)
    flipped = count_swapped_items(split.train, lambda clip: clip.flip(-1), mirror=mirror)  # every frame mirrored
    assert flipped >= 1
    assert sum(s.label in (0, 1) for s in split.train) > flipped  # some stayed as they were (p = 0.5)
    # Named pairs reach the training set through the config; eval sets are never mirrored.
    cfg = load_config(None, [f"data.mirror_pairs=[[{classes[0]}, {classes[1]}]]", "data.hflip=false"])
    assert build.train_dataset(cfg, split).mirror.twin == {0: 1, 1: 0}
    assert build.train_dataset(cfg, split, reverse=False).mirror is None
    assert build.eval_dataset(cfg, split.test, num_clips=1).mirror is None


def test_feature_dataset_mirrors_cached_features():
    from tests.helpers import in_memory_feature_datasets

    negate = torch.neg  # a stand-in for CNNLSTM.mirror_features
    fd, val, feats, labels = in_memory_feature_datasets(mirror=Mirror([(0, 1), (2, 2)], negate, prob=0.5, seed=1))
    flips = {"pair": 0, "own": 0}
    for i in range(40):
        item, x = fd[i], feats[f"v{i}"][0]
        if not torch.equal(item["clip"], x):
            torch.testing.assert_close(item["clip"], -x)
            assert item["label"] == {0: 1, 1: 0, 2: 2}[labels[i]]
            flips["own" if labels[i] == 2 else "pair"] += 1
        else:
            assert item["label"] == labels[i]
    assert flips["pair"] >= 3 and flips["own"] >= 2
    # Validation items are never mirrored.
    _, val, feats, labels = in_memory_feature_datasets(mirror=Mirror([(0, 1)], negate, prob=1.0))
    assert all(val[i]["label"] == labels[i] and torch.equal(val[i]["clip"], feats[f"v{i}"]) for i in range(40))
