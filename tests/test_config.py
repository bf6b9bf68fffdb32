import pytest

from actionrec.config import Config, ConfigError, config_from_checkpoint, config_to_dict, load_config

from pathlib import Path

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["optim.lr=3e-4", "data.clip_len=8", "data.hflip=false", "data.crop_scale=[0.5, 1.0]"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.data.sampling.clip_len == 8
    assert cfg.data.hflip is False
    assert cfg.data.crop_scale == (0.5, 1.0)
    assert isinstance(cfg, Config)


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(Exception):
        cfg.optim.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.data.sampling.clip_len >= 1


def test_yaml_file_values_and_override_precedence(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("optim:\n  lr: 0.1\ntrain:\n  epochs: 3\n")
    cfg = load_config(p, ["train.epochs=5"])
    assert cfg.optim.lr == 0.1 and cfg.train.epochs == 5


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lrr=1", "optim.lrr"),
        ("nosection.x=1", "nosection"),
        ("data.occlusion.probb=0.5", "data.occlusion.probb"),
    ],
)
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.clip_len=eight", "data.clip_len"),
        ("data.clip_len=8.5", "data.clip_len"),
        ("data.hflip=1", "data.hflip"),
        ("optim.lr=fast", "optim.lr"),
        ("model.pooling=max", "model.pooling"),
        ("data.crop_scale=[0.5]", "data.crop_scale"),
        ("data.balance=weighted", "data.balance"),
        ("optim.scheduler=step", "optim.scheduler"),
        ("train.best_metric=top5", "train.best_metric"),
    ],
)
def test_wrong_type_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.clip_len=0", "data.clip_len"),
        ("data.resize_short=100", "data.resize_short"),
        ("optim.lr=-1", "optim.lr"),
        ("loss.alpha=sometimes", "loss.alpha"),
        ("train.device=tpu", "train.device"),
        ("model.pretrained=/no/such/file.pth", "model.pretrained"),
        ("train.cache_features=true", "train.cache_features"),
        ("optim.plateau_factor=1", "optim.plateau_factor"),
        ("optim.plateau_factor=0", "optim.plateau_factor"),
        ("optim.plateau_patience=-1", "optim.plateau_patience"),
    ],
)
def test_invalid_values_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("optim: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)


def test_round_trip_through_dict_and_checkpoint_clears_pretrained(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    cfg = load_config(None, [f"model.pretrained={weights}", "loss.alpha=[1.0, 2.0]"])
    saved = config_to_dict(cfg)
    weights.unlink()  # the checkpoint's machine may not have the file
    back = config_from_checkpoint(saved, ["eval.num_clips=3"])
    assert back.model.pretrained == "" and back.eval.num_clips == 3 and back.loss.alpha == [1.0, 2.0]
    assert back.data == cfg.data and back.optim == cfg.optim


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")


REPO = Path(__file__).resolve().parents[1]
DOCUMENTED = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "tools").iterdir()),
              *CONFIGS]


def _named_configs() -> list[tuple[str, str]]:
    import re

    found = set()
    for doc in DOCUMENTED:
        if doc.is_file():
            found.update((doc.relative_to(REPO).as_posix(), m) for m in re.findall(r"configs/[\w.-]+\.ya?ml", doc.read_text()))
    return sorted(found)


NAMED = _named_configs()


def test_docs_and_tools_name_configs():
    # The scan itself must see the documented commands (README and tools/slurm_train.sh name configs).
    assert {"README.md", "tools/slurm_train.sh"} <= {doc for doc, _ in NAMED}


@pytest.mark.parametrize("doc, config", NAMED, ids=[f"{d}:{c}" for d, c in NAMED])
def test_every_config_named_in_tools_and_docs_exists_and_loads(doc, config):
    path = REPO / config
    assert path.is_file(), f"{doc} names {config}, which does not exist"
    load_config(path)
