"""data.reverse_pairs: training clips played backwards take their twin class's label."""

from __future__ import annotations

import pytest
import torch

from actionrec import build
from actionrec.config import ConfigError, load_config
from actionrec.data.dataset import ClipSampling, VideoClipDataset
from actionrec.data.reversal import TimeReversal, reverse_pairs_to_indices
from actionrec.data.splits import load_split
from actionrec.data.transforms import train_transform
from actionrec.models.losses import inverse_frequency_alpha

KW = dict(resize_short=40, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_reversal_flips_time_swaps_twins_and_is_deterministic():
    rev = TimeReversal([(0, 1), (2, 2)], prob=0.5, seed=7)
    clip = torch.arange(5.0)[:, None].repeat(1, 3)  # (T=5, D=3), step t holds t
    outcomes = {0: 0, 1: 0}
    for index in range(200):
        out, label = rev(clip, 0, epoch=0, index=index)
        if label == 1:
            torch.testing.assert_close(out, clip.flip(0))
        else:
            assert label == 0 and torch.equal(out, clip)
        outcomes[label] += 1
        # The same (epoch, index) draws the same, in any process.
        again, label2 = TimeReversal([(0, 1), (2, 2)], prob=0.5, seed=7)(clip, 0, 0, index)
        assert label2 == label and torch.equal(again, out)
    assert 70 <= outcomes[1] <= 130, outcomes  # p = 0.5 of 200: 100 +- 3.5 sd
    # A class that is its own twin is reversed without a label change; a class without one never.
    seen = {rev(clip, 2, 0, i)[1] for i in range(50)}
    assert seen == {2} and any(torch.equal(rev(clip, 2, 0, i)[0], clip.flip(0)) for i in range(50))
    assert all(torch.equal(rev(clip, 3, 0, i)[0], clip) and rev(clip, 3, 0, i)[1] == 3 for i in range(50))
    assert all(TimeReversal([(0, 1)], prob=0.0)(clip, 0, 0, i)[1] == 0 for i in range(50))
    assert all(TimeReversal([(0, 1)], prob=1.0)(clip, 1, 0, i)[1] == 0 for i in range(50))


def test_expected_counts_and_alpha_auto():
    rev = TimeReversal([(0, 1), (2, 2)], prob=0.5)
    assert rev.expected_counts([30, 10, 5, 7]) == [20.0, 20.0, 5.0, 7.0]
    assert TimeReversal([(0, 1)], prob=0.25).expected_counts([40, 8]) == [32.0, 16.0]
    cfg = load_config(None, ["data.reverse_pairs=[[a, b]]", "loss.alpha=auto"])
    loss = build.loss_from(cfg, [0] * 30 + [1] * 10 + [2] * 5, ["a", "b", "c"])
    torch.testing.assert_close(loss.alpha, torch.tensor(inverse_frequency_alpha([20.0, 20.0, 5.0]), dtype=loss.alpha.dtype))


def test_pair_names_are_checked():
    assert reverse_pairs_to_indices([("B", "A"), ("C", "C")], ["A", "B", "C"]) == [(1, 0), (2, 2)]
    with pytest.raises(ConfigError, match="class 'Z' is not in the dataset"):
        reverse_pairs_to_indices([("A", "Z")], ["A", "B"])
    with pytest.raises(ConfigError, match="one pair only"):
        load_config(None, ["data.reverse_pairs=[[A, B], [B, C]]"])
    with pytest.raises(ConfigError, match=r"data.reverse_prob=1.5: must be in \[0, 1\]"):
        load_config(None, ["data.reverse_prob=1.5"])
    with pytest.raises(ValueError, match="two reverse pairs"):
        TimeReversal([(0, 1), (1, 2)])


def test_video_dataset_reverses_the_same_augmented_frames(tiny_dataset):
    split = load_split(tiny_dataset)
    classes = list(split.classes)
    twins = (classes[0], classes[1])
    rev = TimeReversal(reverse_pairs_to_indices([twins], classes), prob=0.5, seed=3)

    def make(reversal):
        return VideoClipDataset(split.train, sampling=ClipSampling(clip_len=6), train=True, seed=3,
                                transforms=[train_transform(**KW, hflip=False)], reversal=reversal)

    plain, reversing = make(None), make(rev)
    flipped = 0
    for i, sample in enumerate(split.train):
        a, b = plain[i], reversing[i]
        if b["label"] != a["label"]:
            assert {a["label"], b["label"]} == {0, 1}
            # Same random crop, jitter and occlusion draws, frames in the opposite order.
            torch.testing.assert_close(b["clip"], a["clip"].flip(0), rtol=0, atol=0)
            flipped += 1
        else:
            torch.testing.assert_close(b["clip"], a["clip"], rtol=0, atol=0)
    assert flipped >= 1
    assert sum(s.label in (0, 1) for s in split.train) > flipped  # some stayed forwards (p = 0.5)


def test_feature_dataset_reverses_cached_features():
    from actionrec.engine.feature_cache import FeatureDataset

    class Cache:
        def __init__(self, feats):
            self.feats = feats

        def get(self, path):
            return self.feats[path]

    # A stand-in cache (FeatureDataset only calls .get) keeps the test in memory.
    feats = {f"v{i}": torch.randn(1, 5, 4) for i in range(40)}  # (views, T, D) per video
    ds = type("DS", (), {"paths": list(feats), "labels": [i % 3 for i in range(40)]})()
    fd = FeatureDataset(ds, [Cache(feats)], train=True, reversal=TimeReversal([(0, 1)], prob=0.5, seed=1))
    swapped = 0
    for i in range(40):
        item = fd[i]
        if item["label"] != ds.labels[i]:
            assert {item["label"], ds.labels[i]} == {0, 1}
            torch.testing.assert_close(item["clip"], feats[f"v{i}"][0].flip(0))
            swapped += 1
        else:
            torch.testing.assert_close(item["clip"], feats[f"v{i}"][0])
    assert swapped >= 3
    # Validation items are never reversed.
    val = FeatureDataset(ds, [Cache(feats)], train=False, reversal=TimeReversal([(0, 1)], prob=1.0))
    assert all(val[i]["label"] == ds.labels[i] for i in range(40))


def _summaries(counts, directions, views=2, dim=12, noise=0.6, seed=0):
    """Order-aware summaries as a contrast gives them: a class with direction vector d reads d + noise
    forwards and -d + noise backwards. Classes sharing a direction up to sign are twins."""
    g = torch.Generator().manual_seed(seed)
    fwd, bwd, labels = [], [], []
    for c, n in enumerate(counts):
        for _ in range(n):
            fwd.append(directions[c] + noise * torch.randn(views, dim, generator=g))
            bwd.append(-directions[c] + noise * torch.randn(views, dim, generator=g))
            labels.append(c)
    return torch.stack(fwd), torch.stack(bwd), labels


def test_find_reverse_pairs_finds_twins_and_only_twins():
    from actionrec.data.reversal import find_reverse_pairs

    g = torch.Generator().manual_seed(1)
    u, v, w = (torch.randn(12, generator=g) for _ in range(3))
    # 0/1 and 3/4 are twins (1 is 0 backwards; 4 is 3 backwards), 2 has no twin; a long tail,
    # the rare twin of a pair with 6 videos against 40.
    fwd, bwd, labels = _summaries([40, 6, 25, 10, 30], [u, -u, v, w, -w])
    pairs, score = find_reverse_pairs(fwd, bwd, labels, 5)
    assert [(a, b) for a, b, _ in pairs] == [(0, 1), (3, 4)]
    assert all(s >= 0.5 for _, _, s in pairs)
    assert score.shape == (5, 5) and score[0, 2] < 0.2 and score[2, 3] < 0.2
    # No twins at all (every class moves its own way): nothing is paired, not even the closest two.
    fwd, bwd, labels = _summaries([30, 20, 10, 25], [u, v, w, u + v])
    pairs, score = find_reverse_pairs(fwd, bwd, labels, 4)
    assert pairs == [] and float(score.max()) < 0.5
    # A class that looks the same both ways is not made anybody's twin (nor its own).
    fwd, bwd, labels = _summaries([30, 30], [torch.zeros(12), u])
    assert find_reverse_pairs(fwd, bwd, labels, 2)[0] == []
    assert find_reverse_pairs(fwd[:1], bwd[:1], labels[:1], 2)[0] == []  # one video: nothing to hold out


def test_order_summary_is_motion_mean_and_signed_contrast():
    from actionrec.models.factory import create_model

    model = create_model("cnn_lstm", num_classes=3, backbone="test_resnet", pretrained=False, temporal="transformer",
                         hidden_size=16, motion="only", motion_map=4, contrast=8, freeze_backbone=True).eval()
    feats = torch.randn(2, 8, model.feature_dim)
    out = model.order_summary(feats)
    a, m = model.appearance_dim, model.motion_dim
    motion = model.motion_corr(feats[..., a : a + m])[:, :-1].mean(1)
    means = feats[..., -model.contrast_channels :]
    torch.testing.assert_close(out, torch.cat([motion, means[:, 6:].mean(1) - means[:, :2].mean(1)], -1))
    back = model.order_summary(feats.flip(1))
    torch.testing.assert_close(back[:, motion.shape[1] :], -out[:, motion.shape[1] :])  # the contrast flips sign
    assert not torch.allclose(back[:, : motion.shape[1]], out[:, : motion.shape[1]])  # motion runs the other way


def test_auto_needs_the_feature_cache():
    with pytest.raises(ConfigError, match=r"data.reverse_pairs='auto': needs train.cache_features=true"):
        load_config(None, ["data.reverse_pairs=auto"])
    cfg = load_config(None, ["data.reverse_pairs=auto", "train.cache_features=true", "model.freeze_backbone=true"])
    assert cfg.data.reverse_pairs == "auto" and build.reversal_from(cfg, ["A", "B"]) is None


def test_find_reverse_pairs_leaves_out_a_class_with_two_candidate_twins():
    from actionrec.data.reversal import find_reverse_pairs

    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(12, generator=g), torch.randn(12, generator=g)
    # Class 0 backwards looks like class 1 and like class 2 alike (an appear played backwards is
    # close to a vanish and to an exit): neither is taken. 3/4 stay a clean pair.
    fwd, bwd, labels = _summaries([30, 20, 20, 25, 15], [u, -u, -u + 0.05 * v, v, -v], noise=0.8)
    pairs, score = find_reverse_pairs(fwd, bwd, labels, 5)
    assert score[0, 1] >= 0.5 and score[0, 2] >= 0.5
    assert [(a, b) for a, b, _ in pairs] == [(3, 4)]


def test_pairs_from_scores_takes_clear_pairs_only():
    from actionrec.data.reversal import pairs_from_scores

    s = torch.zeros(6, 6)
    def put(a, b, v):
        s[a, b] = s[b, a] = v
    put(0, 1, 1.1)   # clear
    put(2, 3, 0.51)  # above the threshold, but 3 has a rival at 0.44: left out
    put(3, 4, 0.44)
    put(4, 5, 0.30)  # below both bars: no effect
    assert pairs_from_scores(s) == [(0, 1, pytest.approx(1.1))]
    put(3, 4, 0.39)  # the rival falls under 0.4: 2/3 is taken, 4/5 is not (under 0.5)
    assert [(a, b) for a, b, _ in pairs_from_scores(s)] == [(0, 1), (2, 3)]
    assert pairs_from_scores(s, threshold=1.2) == []


def test_twin_report_names_pairs_and_says_what_to_do_with_ambiguous_ones():
    from actionrec.data.reversal import pairs_from_scores, twin_report

    classes = ["PanLeft", "PanRight", "Appear", "Enter", "Exit"]
    s = torch.zeros(5, 5)
    for (a, b), v in {(0, 1): 1.06, (2, 4): 0.63, (3, 4): 0.61, (2, 3): 0.10}.items():
        s[a, b] = s[b, a] = v
    found = pairs_from_scores(s)
    assert [(a, b) for a, b, _ in found] == [(0, 1)]
    assert twin_report(found, s, classes) == (
        "PanLeft/PanRight (1.06); left out, a class with a rival pair scoring 0.40 or more: Appear/Exit (0.63), "
        "Enter/Exit (0.61) (if you know which of these are twins, name them in data.reverse_pairs)")
    s[2, 4] = s[4, 2] = 0.30  # nothing ambiguous: the best other pair against the threshold
    s[3, 4] = s[4, 3] = 0.29
    assert twin_report(pairs_from_scores(s), s, classes) == (
        "PanLeft/PanRight (1.06); highest other pair Appear/Exit (0.30, threshold 0.50)")
    assert twin_report([], torch.zeros(2, 2), ["A", "B"]) == "no time-reversed twins; highest other pair A/B (0.00, threshold 0.50)"
