import numpy as np
import pytest

from actionrec.data.sampling import ClipSampling, dense_indices, eval_clip_indices, segment_indices, train_clip_indices, uniform_indices


def test_segment_sampling_one_frame_per_segment():
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = segment_indices(100, 8, rng=rng)
        assert idx.shape == (8,) and idx.dtype == np.int64
        # segment k covers [12.5k, 12.5(k+1)) -> frames floor bounds
        lo = np.floor(np.linspace(0, 100, 9)[:-1]).astype(int)
        hi = np.floor(np.linspace(0, 100, 9)[1:]).astype(int)
        assert np.all(idx >= lo) and np.all(idx < hi)


def test_segment_sampling_centre_is_deterministic():
    np.testing.assert_array_equal(segment_indices(16, 4, rng=None), [1, 5, 9, 13])


def test_segment_sampling_covers_all_positions_over_draws():
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(500):
        seen.update(segment_indices(40, 8, rng=rng).tolist())
    assert seen == set(range(40))


def test_uniform_sampling_is_evenly_spaced_and_moves_through_the_video():
    rng = np.random.default_rng(0)
    lo = np.floor(np.linspace(0, 60, 17)[:-1]).astype(int)
    hi = np.floor(np.linspace(0, 60, 17)[1:]).astype(int)
    firsts, gaps = set(), set()
    for _ in range(300):
        idx = uniform_indices(60, 16, rng=rng)
        assert idx.shape == (16,) and idx.dtype == np.int64
        assert np.all(idx >= lo) and np.all(idx < hi)  # one frame in each of TSN's segments
        gaps.update(np.diff(idx).tolist())
        firsts.add(int(idx[0]))
    # 60 / 16 = 3.75 frames a segment: every gap is 3 or 4 (rounding), where TSN's draws give 1 to 7
    assert gaps <= {3, 4}
    assert firsts == {0, 1, 2}  # the shared position covers the first segment
    tsn = np.concatenate([np.diff(segment_indices(60, 16, rng=rng)) for _ in range(300)])
    assert tsn.min() <= 1 and tsn.max() >= 6


def test_uniform_sampling_tests_as_segment_sampling():
    np.testing.assert_array_equal(uniform_indices(60, 16, rng=None), segment_indices(60, 16, rng=None))
    np.testing.assert_array_equal(ClipSampling(16, "uniform", num_clips=3).eval_indices(60),
                                  ClipSampling(16, "segment", num_clips=3).eval_indices(60))
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(uniform_indices(3, 8, rng=rng), [0, 1, 2, 0, 1, 2, 0, 1])  # short: looped
    a = ClipSampling(16, "uniform").train_indices(60, np.random.default_rng(5))
    np.testing.assert_array_equal(a, uniform_indices(60, 16, rng=np.random.default_rng(5)))


def test_dense_clip_stride_and_bounds():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        idx = dense_indices(100, 8, frame_interval=4, rng=rng)
        assert np.all(np.diff(idx) == 4)
        assert idx[0] >= 0 and idx[-1] <= 99
        starts.add(int(idx[0]))
    assert min(starts) == 0 and max(starts) == 100 - 29  # temporal jitter spans the valid range


def test_dense_interval_shrinks_for_short_video():
    idx = dense_indices(20, 8, frame_interval=4, rng=None)
    assert np.all(np.diff(idx) == 2) and idx[-1] <= 19


@pytest.mark.parametrize("mode,expected", [("loop", [0, 1, 2, 0, 1, 2, 0, 1]), ("repeat_last", [0, 1, 2, 2, 2, 2, 2, 2])])
def test_short_video_padding(mode, expected):
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(segment_indices(3, 8, rng=rng, short_video=mode), expected)
    np.testing.assert_array_equal(dense_indices(3, 8, rng=rng, short_video=mode), expected)
    np.testing.assert_array_equal(eval_clip_indices(3, 8, 2, short_video=mode), [expected, expected])


def test_eval_clips_evenly_spaced_and_deterministic():
    a = eval_clip_indices(100, 4, 5)
    b = eval_clip_indices(100, 4, 5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 4)
    # clip k picks the same relative position in each 25-frame segment: 2, 7, 12, 17, 22
    np.testing.assert_array_equal(a[:, 0], [2, 7, 12, 17, 22])
    np.testing.assert_array_equal(a[:, 1] - a[:, 0], [25] * 5)
    d = eval_clip_indices(100, 8, 3, mode="dense", frame_interval=2)
    assert d.shape == (3, 8) and np.all(np.diff(d, axis=1) == 2)
    assert d[0, 0] < d[1, 0] < d[2, 0] and d[2, -1] <= 99


def test_bad_arguments():
    with pytest.raises(ValueError, match="no frames"):
        segment_indices(0, 8, rng=None)
    with pytest.raises(ValueError, match="mode"):
        train_clip_indices(10, 4, mode="random", rng=np.random.default_rng())
