"""Property-based tests (hypothesis): arbitrary text to the parsers gives a value or their own error.

The dotted-override parser, YAML config loading and the device-placement arithmetic answer any input
with a ``Config``/value or a ``ConfigError`` (a ``ValueError``, shown by the tools as one line); the
split-list readers with a value, a ``ValueError`` naming file and line, or ``FileNotFoundError`` for
an entry whose video is missing. Never another exception: that would be a traceback for the user.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actionrec.config import ConfigError, load_config, parse_overrides
from actionrec.data.splits import read_class_index, read_split_file
from actionrec.engine.distributed import expand_device_spec

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KEYS = ["train.epochs", "optim.lr", "data.crop_scale", "model.placement.cnn", "data.occlusion.prob", "loss.alpha",
        "logging.wandb.mode", "train", "model", "x.y.z", ""]
# Text that looks like what people type: YAML punctuation, digits, keys, and arbitrary unicode.
TYPED = st.text(alphabet=string.printable + "{}[]:,'\"-\u00e9\u4e2d\x00", max_size=60) | st.text(max_size=40)


@SETTINGS
@given(key=st.sampled_from(KEYS) | st.text(max_size=20), value=TYPED)
def test_any_override_gives_a_config_or_config_error(key, value):
    try:
        parse_overrides([f"{key}={value}"])
        load_config(None, [f"{key}={value}"])
    except ConfigError as e:
        assert "\n" not in str(e)


@SETTINGS
@given(item=st.text(max_size=60))
def test_any_override_string_without_structure(item):
    try:
        load_config(None, [item])
    except ConfigError:
        pass


@SETTINGS
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
       data=st.binary(max_size=200))
def test_any_yaml_file_gives_a_config_or_config_error(tmp_path, text, data):
    for i, content in enumerate((text.encode("utf-8", "surrogatepass"), data)):
        path = tmp_path / f"c{i}.yaml"
        path.write_bytes(content)
        try:
            load_config(path)
        except ConfigError as e:
            assert str(path) in str(e) and "\n" not in str(e)


# YAML-shaped documents built from the real sections and keys, with arbitrary values.
SECTION_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | TYPED,
                              lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TYPED, inner, max_size=3),
                              max_leaves=8)


@SETTINGS
@given(doc=st.dictionaries(st.sampled_from(["data", "model", "optim", "train", "loss", "eval", "logging", "demo",
                                            "other"]),
                           st.dictionaries(st.sampled_from(["epochs", "lr", "backbone", "clip_len", "occlusion",
                                                            "placement", "wandb", "alpha", "crop_scale", "prob"]),
                                           SECTION_VALUES, max_size=3) | SECTION_VALUES, max_size=3))
def test_structured_yaml_gives_a_config_or_config_error(tmp_path, doc):
    import yaml

    path = tmp_path / "doc.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_config(path)
    except ConfigError:
        pass


@SETTINGS
@given(spec=st.text(alphabet="cuda:{}()+-*/%local_rank0123456789 ,.x", max_size=40) | st.text(max_size=30),
       local_rank=st.integers(0, 64))
def test_device_placement_arithmetic_gives_a_device_or_value_error(spec, local_rank):
    try:
        out = expand_device_spec(spec, local_rank)
        assert isinstance(out, str)
    except ValueError as e:
        assert "\n" not in str(e)
    try:
        load_config(None, [f"model.placement.cnn={spec}"])
    except ConfigError:
        pass


def test_deeply_nested_arithmetic_is_an_error_not_a_crash():
    for spec in ("cuda:{" + "(" * 500 + "1" + ")" * 500 + "}", "cuda:{" + "+".join(["1"] * 20000) + "}",
                 "cuda:{" + "9" * 5000 + "}"):
        with pytest.raises(ValueError):
            expand_device_spec(spec, 0)


@pytest.fixture(scope="module")
def split_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("split")
    for cls in ("Jump", "Run"):
        (root / cls).mkdir()
        (root / cls / f"v_{cls}_g01_c01.avi").write_bytes(b"x")
    return root


LINES = st.lists(st.sampled_from(["Jump/v_Jump_g01_c01.avi 1", "Run/v_Run_g01_c01.avi", "Run/v_Run_g01_c01.avi 2",
                                  "../x.avi 1", "/etc/passwd", "Jump/notes.txt", "Walk/v.avi 3", "Jump\\v.avi",
                                  "1 Jump", "2 Run", "", " ", "\x00", "Jump/v_Jump_g01_c01.avi 99"]) | TYPED,
                 max_size=8)


@SETTINGS
@given(lines=LINES, ending=st.sampled_from(["\n", "\r\n", "\r"]), bom=st.booleans())
def test_any_split_list_gives_samples_or_a_clear_error(split_root, tmp_path, lines, ending, bom):
    path = tmp_path / "trainlist01.txt"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + ending.join(lines).encode("utf-8", "surrogatepass"))
    try:
        samples = read_split_file(path, split_root, ("Jump", "Run"))
        assert all(s.label in (0, 1) for s in samples)
    except (ValueError, FileNotFoundError) as e:
        assert str(path) in str(e) and "\n" not in str(e)
    try:
        classes = read_class_index(path)
        assert all(isinstance(c, str) and c for c in classes)
    except ValueError as e:
        assert str(path) in str(e)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_binary_split_list_is_a_clear_error(split_root, tmp_path, data):
    path = tmp_path / "testlist01.txt"
    path.write_bytes(data)
    try:
        read_split_file(path, split_root, ("Jump", "Run"))
    except (ValueError, FileNotFoundError) as e:
        assert str(path) in str(e) and "\n" not in str(e)
