"""Typed experiment configuration: section dataclasses, ``load_config`` and ``validate``.

A YAML file in ``configs/`` holds only the values that differ from the defaults below.
Dotted command-line overrides (``optim.lr=3e-4 data.clip_len=8``) go through the same
type checks. Unknown keys and wrong types raise ``ConfigError`` naming the key.
The result is a frozen tree: derived values are computed by the caller, never written back.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from actionrec.data.occlusion import FrameOcclusion
from actionrec.data.sampling import ClipSampling
from actionrec.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(UserError, ValueError):
    """A config key is unknown, has the wrong type, or holds an invalid value.

    The message is one line: newlines and other control characters from user text are escaped.
    """

    def __init__(self, message: str):
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message)))


# A section field with this metadata is written in YAML as flat keys of its parent section:
# {YAML key: the object's attribute}. data.sampling keeps the keys data.clip_len, data.train_sampling, ...
FLAT = "flat_keys"


@dataclass(frozen=True)
class DataConfig:
    root: str = ""  # UCF-style folder; empty means the built-in synthetic dataset
    cache_dir: str = "~/.cache/actionrec"  # where the synthetic dataset is generated
    split: int = 1
    split_dir: str = ""  # folder with classInd.txt / trainlistNN.txt; default: look under root
    # The dataset's own ClipSampling (num_clips stays 1: eval.num_clips and train.val_clips set it per use).
    sampling: ClipSampling = field(default_factory=ClipSampling, metadata={FLAT: {
        "clip_len": "clip_len", "frame_interval": "frame_interval", "train_sampling": "mode",
        "short_video": "short_video"}})
    resize_short: int = 256
    crop_size: int = 224
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333333)
    hflip: bool = True  # must be False when classes differ by left/right direction
    balance: Literal["none", "sqrt", "inverse"] = "none"  # class-aware train sampling: weight count^-1/2 or count^-1
    # Classes that are each other's time reversal ([[Open, Close], ...]; [C, C]: C looks the same
    # backwards): train clips are played backwards with probability reverse_prob and take the
    # twin's label (data/reversal.py). Names are checked against the dataset's classes. auto: found
    # from the cached features before training (build.find_twins_from: a probe says where
    # to look, a scout head which pairs; needs train.cache_features), and the run's config.yaml
    # lists what was found.
    reverse_pairs: Literal["auto"] | tuple[tuple[str, str], ...] = ()
    reverse_prob: float = 0.5
    # Left-right flips that know the labels ([[PanLeft, PanRight], [Jump, Jump], ...]): train clips of
    # the named classes are flipped with probability mirror_prob and take the label their mirror image
    # has (the twin, or the class itself for [C, C]); classes not named are never flipped
    # (data/mirror.py). auto: the scout heads of reverse_pairs=auto say which classes look the same
    # mirrored, which swap, and which neither (needs train.cache_features). Not with data.hflip, which
    # flips every class and keeps its label.
    mirror_pairs: Literal["auto"] | tuple[tuple[str, str], ...] = ()
    mirror_prob: float = 0.5
    color_jitter: float = 0.4
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    occlusion: FrameOcclusion = field(default_factory=FrameOcclusion)  # the transform's own parameters
    backend: Literal["auto", "decord", "pyav", "opencv"] = "auto"  # auto: decord where exact, else PyAV
    seek: Literal["auto", "always", "never"] = "auto"
    num_workers: int = 2
    max_bad_fraction: float = 0.05  # stop when more than this fraction of videos fail to decode
    loader_timeout: float = 300.0  # seconds a worker may take for one batch before the run stops


@dataclass(frozen=True)
class PlacementConfig:
    """Model-parallel placement; empty strings mean 'the training device'."""

    cnn: str = ""
    lstm: str = ""


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet18"  # any timm model name
    pretrained: str = ""  # local weights file (timm or torchvision format); never downloaded
    pretrained_format: Literal["auto", "timm", "torchvision"] = "auto"
    temporal: Literal["lstm", "transformer", "none"] = "lstm"  # none: the frame-averaging baseline
    hidden_size: int = 512
    num_layers: int = 2
    bidirectional: bool = True
    lstm_dropout: float = 0.2
    pooling: Literal["last", "mean", "attention"] = "attention"
    feature_grid: int = 1  # pool the last CNN feature map to an N x N grid (1: global average); N > 1 keeps coarse position
    dropout: float = 0.5  # models.heads.DROPOUT (not imported: config stays torch-free); a test pins them equal
    freeze_backbone: bool = False
    freeze_stages: int = 0  # freeze the stem and the first N stages (when not fully frozen)
    grad_checkpointing: bool = False
    # NHWC backbone: faster on every CPU measured (AVX2 EPYC 1.06-1.21x, AVX-512/AMX Xeon 1.19-1.40x: README 'CPU threads')
    channels_last: bool = True
    # Correlation motion features of consecutive frames (stride-8 backbone map): none | add (to the
    # pooled features) | only. What a frozen image backbone lacks for camera and actor motion.
    motion: Literal["none", "add", "only"] = "none"
    motion_map: int = 10  # the stride-8 map is pooled to N x N before the correlation
    # > 0: each position's correlation becomes a softmax over displacements at this temperature
    # before the cells are averaged (share of positions moving each way); 0: raw cosine similarities.
    motion_softmax: float = 0.0
    motion_radius: int = 2  # displacements correlated: up to N map cells (N x 8 px of the crop) each way
    # Width of the end-minus-start appearance contrast that joins the lstm/transformer head's pooled
    # output (models.heads.TemporalContrast; 0: off). Separates time-reversed twins by what is there
    # before and after (appear vs vanish), which motion-only heads cannot see.
    contrast: int = 0
    # 1: the contrast reads the stride-16 stage's channel means; N > 1: also that map in N x N cells,
    # so a change in one part of the frame (an actor rising, popping up) is not averaged away.
    contrast_grid: int = 1
    # N > 1: N temporal heads (each with its contrast branch) trained one after the other on the frozen
    # backbone's features, train.epochs split evenly between them (each its own warmup and cosine),
    # their softmax averaged at test: a seed ensemble in one model and one run (docs/real_footage.md).
    heads: int = 1
    placement: PlacementConfig = field(default_factory=PlacementConfig)


@dataclass(frozen=True)
class LossConfig:
    name: Literal["focal", "ce"] = "focal"
    gamma: float = 2.0
    alpha: str | list[float] | None = None  # None, "auto" (inverse class frequency) or one weight per class
    label_smoothing: float = 0.0
    logit_adjust: float = 0.0  # tau: the loss sees logits + tau * log(class prior) (Menon et al. 2021); 0 = off


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-4
    backbone_lr_mult: float = 1.0  # pretrained backbones usually want a smaller lr than the head
    weight_decay: float = 0.05
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine ends at lr * min_lr_ratio; plateau never goes below it
    scheduler: Literal["cosine", "plateau"] = "cosine"  # plateau: ReduceLROnPlateau on validation loss after warmup
    plateau_patience: int = 2  # validations without a lower val loss before the lr drops
    plateau_factor: float = 0.5  # lr multiplier at each drop
    clip_grad_norm: float = 1.0  # 0 disables clipping
    accum_steps: int = 1


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation (Hinton et al. 2015): a trained teacher's temperature-softened logits
    guide the student. loss = label loss + weight * temperature^2 * KL(teacher || student)."""

    teacher: str = ""  # the teacher's checkpoint (tools/train.py); empty: no distillation
    weight: float = 1.0
    temperature: float = 4.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 8  # per process
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    seed: int = 42
    deterministic: bool = False
    output_dir: str = "runs"
    name: str = ""  # run name; default: config file stem
    save_every_steps: int = 0  # also write last.pt every N optimizer steps (0: per epoch only)
    keep_best: int = 1
    best_metric: Literal["mean_class_acc", "top1", "loss"] = "mean_class_acc"  # ranks best.pt (loss: lower is better)
    val_every: int = 1  # epochs between validations
    val_clips: int = 1
    max_steps_per_epoch: int = 0  # 0: the whole epoch; >0 caps it (smoke tests, debugging)
    log_every: int = 10
    nan_policy: Literal["stop", "skip"] = "stop"
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    sync_bn: bool = False
    cache_features: bool = False  # frozen backbone only: compute clip features once and reuse them
    cache_views: int = 1  # with cache_features: 1 = one centre-crop clip per video; K > 1 = K augmented clips, epochs cycle through them
    cpu_threads: int = 0  # torch threads when training on CPU; 0: the free cores left over by data workers (>= 1)
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass(frozen=True)
class EvalConfig:
    num_clips: int = 10
    num_crops: Literal[1, 3] = 1
    batch_size: int = 4
    # Each test clip also played backwards, read at the time-reversed twins' labels (data.reverse_pairs;
    # CNNLSTM.set_test_twins): every tool that loads the checkpoint, and validation in training.
    reverse_views: bool = False


@dataclass(frozen=True)
class WandbConfig:
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "actionrec"
    entity: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    group: str = ""
    notes: str = ""
    log_videos_every: int = 5  # epochs between logging a few validation clips as videos (0: never)
    log_model: bool = True  # log best.pt as a W&B model artifact at the end of training


@dataclass(frozen=True)
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class DemoConfig:
    stride: int = 4  # run the temporal head every N frames
    smooth: int = 5  # average the last K window predictions
    topk: int = 3
    frame_step: int = 1  # sample every Nth source frame, so a window spans about a training clip's time


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with type checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in canonical form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in args:
            try:
                return _coerce(value, arm, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not match {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        if value in args and type(value) is type(next(a for a in args if a == value)):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _flat_keys(cls: type) -> dict[str, tuple[str, str]]:
    """{flat YAML key: (field, attribute of the field's object)} of ``cls``'s ``FLAT`` fields."""
    return {key: (f.name, attr) for f in dataclasses.fields(cls) for key, attr in f.metadata.get(FLAT, {}).items()}


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    flat = _flat_keys(cls)
    names = {f.name for f in dataclasses.fields(cls) if FLAT not in f.metadata} | set(flat)
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}' (valid keys in '{prefix or 'top level'}': "
            f"{', '.join(sorted(names))})"
        )
    kwargs: dict[str, Any] = {}
    parts: dict[str, dict] = {}  # FLAT field -> {attribute: value}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in flat:
            field_name, attr = flat[name]
            parts.setdefault(field_name, {})[attr] = _coerce(value, typing.get_type_hints(hints[field_name])[attr], key)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
    kwargs.update({name: hints[name](**values) for name, values in parts.items()})
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict (lists instead of tuples) suitable for YAML, JSON and checkpoints."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            out = {}
            for f in dataclasses.fields(v):
                if FLAT in f.metadata:
                    out.update({key: conv(getattr(getattr(v, f.name), attr)) for key, attr in f.metadata[FLAT].items()})
                else:
                    out[f.name] = conv(getattr(v, f.name))
            return out
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def config_from_dict(data: dict) -> Config:
    """Build and validate a ``Config`` from a (possibly partial) nested dict."""
    cfg = _from_dict(Config, data or {})
    validate(cfg)
    return cfg


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> dict:
    """Turn ``["optim.lr=3e-4", "data.hflip=false"]`` into a nested dict (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': cannot parse value: {_yaml_error_line(e)}") from None
        _set_dotted(tree, key, value)
    return tree


def merge_dicts(base: dict, update: dict) -> dict:
    """Recursive merge of nested dicts; ``update`` wins."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


def _yaml_error_line(e: yaml.YAMLError) -> str:
    """One line: 'line L, column C: problem' (PyYAML's own message spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides.

    Args:
        path: YAML file holding only the values that differ from the defaults.
        overrides: ``key.sub=value`` strings; values are parsed with ``yaml.safe_load``.

    Returns:
        The validated, frozen ``Config``.

    Raises:
        ConfigError: unknown key, wrong type or invalid value (the message names the key).
        FileNotFoundError: ``path`` does not exist.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not a text YAML file (byte {e.start} is not UTF-8)") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {_yaml_error_line(e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, not a {type(data).__name__}")
        try:
            config_from_dict(data)  # the file's own mistakes are reported with its name
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    data = merge_dicts(data, parse_overrides(overrides))
    return config_from_dict(data)


def config_from_checkpoint(saved: dict, overrides: Sequence[str] = ()) -> Config:
    """The config stored in a checkpoint plus overrides.

    ``model.pretrained`` and ``train.distill.teacher`` are cleared: the checkpoint already holds
    the weights, and the files they named may not exist on the machine that evaluates or deploys it.
    """
    data = merge_dicts(saved, {"model": {"pretrained": ""}, "train": {"distill": {"teacher": ""}}})
    return config_from_dict(merge_dicts(data, parse_overrides(overrides)))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _check(cond: bool, key: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: {why}")


def validate(cfg: Config) -> None:
    """Check value ranges and cross-field rules once, right after loading."""
    _validate_data(cfg.data)
    _validate_model(cfg.model)
    _validate_loss(cfg.loss)
    _validate_optim(cfg.optim)
    _validate_train(cfg.train, cfg.model)
    _validate_rest(cfg)


def _validate_data(d: DataConfig) -> None:
    s = d.sampling
    _check(s.clip_len >= 1, "data.clip_len", s.clip_len, "must be >= 1")
    _check(s.frame_interval >= 1, "data.frame_interval", s.frame_interval, "must be >= 1")
    _check(1 <= d.split <= 99, "data.split", d.split, "must be a split number like 1, 2 or 3")
    _check(d.crop_size >= 8, "data.crop_size", d.crop_size, "must be >= 8")
    _check(d.resize_short >= d.crop_size, "data.resize_short", d.resize_short, f"must be >= data.crop_size ({d.crop_size})")
    _check(0 < d.crop_scale[0] <= d.crop_scale[1] <= 1, "data.crop_scale", d.crop_scale, "need 0 < min <= max <= 1")
    _check(0 < d.crop_ratio[0] <= d.crop_ratio[1], "data.crop_ratio", d.crop_ratio, "need 0 < min <= max")
    _check(0 <= d.color_jitter <= 1, "data.color_jitter", d.color_jitter, "must be in [0, 1]")
    _check(all(s > 0 for s in d.std), "data.std", d.std, "must be positive")
    oc = d.occlusion
    for name in ("prob", "max_frac", "patch_prob", "patch_frame_frac", "patch_max_area"):
        v = getattr(oc, name)
        _check(0 <= v <= 1, f"data.occlusion.{name}", v, "must be in [0, 1]")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    _check(0 <= d.reverse_prob <= 1, "data.reverse_prob", d.reverse_prob, "must be in [0, 1]")
    if d.reverse_pairs != "auto":  # auto: _validate_rest
        named = [c for pair in d.reverse_pairs for c in set(pair)]
        _check(len(named) == len(set(named)), "data.reverse_pairs", [list(p) for p in d.reverse_pairs],
               "a class may be in one pair only")
    _check(0 <= d.mirror_prob <= 1, "data.mirror_prob", d.mirror_prob, "must be in [0, 1]")
    if d.mirror_pairs != "auto":
        named = [c for pair in d.mirror_pairs for c in set(pair)]
        _check(len(named) == len(set(named)), "data.mirror_pairs", [list(p) for p in d.mirror_pairs],
               "a class may be in one pair only")
    _check(not (d.mirror_pairs and d.hflip), "data.hflip", True,
           "cannot be used with data.mirror_pairs (hflip flips every class and keeps its label; set data.hflip=false)")
    _check(0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction", d.max_bad_fraction, "must be in [0, 1]")
    _check(d.loader_timeout >= 0, "data.loader_timeout", d.loader_timeout, "must be >= 0 (0: no timeout)")


def _validate_model(m: ModelConfig) -> None:
    _check(bool(m.backbone), "model.backbone", m.backbone, "must name a timm model")
    _check(m.hidden_size >= 1, "model.hidden_size", m.hidden_size, "must be >= 1")
    _check(m.num_layers >= 1, "model.num_layers", m.num_layers, "must be >= 1")
    _check(0 <= m.lstm_dropout < 1, "model.lstm_dropout", m.lstm_dropout, "must be in [0, 1)")
    _check(0 <= m.dropout < 1, "model.dropout", m.dropout, "must be in [0, 1)")
    _check(m.freeze_stages >= 0, "model.freeze_stages", m.freeze_stages, "must be >= 0")
    _check(2 <= m.motion_map <= 64, "model.motion_map", m.motion_map, "must be in [2, 64]")
    _check(0 <= m.contrast <= 4096, "model.contrast", m.contrast, "must be in [0, 4096]")
    _check(0 <= m.motion_softmax <= 10, "model.motion_softmax", m.motion_softmax, "must be in [0, 10]")
    _check(1 <= m.motion_radius <= 8, "model.motion_radius", m.motion_radius, "must be in [1, 8]")
    _check(1 <= m.contrast_grid <= 16, "model.contrast_grid", m.contrast_grid, "must be in [1, 16]")
    _check(1 <= m.heads <= 8, "model.heads", m.heads, "must be in [1, 8]")
    if m.heads > 1:
        _check(m.freeze_backbone, "model.heads", m.heads, "> 1 needs model.freeze_backbone=true (the heads train one "
               "after the other on the same features; a backbone still learning would change them under the first)")
    _check(not (m.contrast and m.temporal == "none"), "model.contrast", m.contrast,
           "needs model.temporal lstm or transformer (the frame-averaging baseline stays order-blind)")
    if m.temporal == "transformer":
        _check(m.hidden_size % 4 == 0, "model.hidden_size", m.hidden_size, "must be a multiple of 4 (the transformer's heads)")
    if m.pretrained:
        p = Path(m.pretrained).expanduser()
        _check(p.is_file(), "model.pretrained", m.pretrained, "file not found (weights are never downloaded)")


def _validate_loss(lo: LossConfig) -> None:
    _check(lo.gamma >= 0, "loss.gamma", lo.gamma, "must be >= 0")
    _check(0 <= lo.label_smoothing < 1, "loss.label_smoothing", lo.label_smoothing, "must be in [0, 1)")
    _check(lo.logit_adjust >= 0, "loss.logit_adjust", lo.logit_adjust, "must be >= 0")
    if isinstance(lo.alpha, str):
        _check(lo.alpha == "auto", "loss.alpha", lo.alpha, "must be null, 'auto' or a list of per-class weights")
    elif isinstance(lo.alpha, list):
        _check(all(a >= 0 for a in lo.alpha), "loss.alpha", lo.alpha, "weights must be >= 0")


def _validate_optim(o: OptimConfig) -> None:
    _check(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    _check(o.backbone_lr_mult >= 0, "optim.backbone_lr_mult", o.backbone_lr_mult, "must be >= 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _check(o.warmup_epochs >= 0, "optim.warmup_epochs", o.warmup_epochs, "must be >= 0")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
    _check(o.clip_grad_norm >= 0, "optim.clip_grad_norm", o.clip_grad_norm, "must be >= 0 (0 disables)")
    _check(o.accum_steps >= 1, "optim.accum_steps", o.accum_steps, "must be >= 1")
    _check(o.plateau_patience >= 0, "optim.plateau_patience", o.plateau_patience, "must be >= 0")
    _check(0 < o.plateau_factor < 1, "optim.plateau_factor", o.plateau_factor, "must be in (0, 1)")


def _validate_train(t: TrainConfig, m: ModelConfig) -> None:
    """``train`` plus the model keys it constrains (placement devices, frozen backbone for caching)."""
    _check(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    for key, dev, optional in (("train.device", t.device, False), ("model.placement.cnn", m.placement.cnn, True),
                               ("model.placement.lstm", m.placement.lstm, True)):
        ok = (optional and dev == "") or dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:")
        _check(ok, key, dev, "use auto, cpu, cuda, cuda:N or cuda:{EXPR of local_rank}")
    _check(t.keep_best >= 1, "train.keep_best", t.keep_best, "must be >= 1")
    _check(t.val_every >= 1, "train.val_every", t.val_every, "must be >= 1")
    _check(t.val_clips >= 1, "train.val_clips", t.val_clips, "must be >= 1")
    _check(t.max_steps_per_epoch >= 0, "train.max_steps_per_epoch", t.max_steps_per_epoch, "must be >= 0")
    _check(t.log_every >= 1, "train.log_every", t.log_every, "must be >= 1")
    _check(t.save_every_steps >= 0, "train.save_every_steps", t.save_every_steps, "must be >= 0")
    _check(t.cpu_threads >= 0, "train.cpu_threads", t.cpu_threads, "must be >= 0 (0: cores minus data workers)")
    _check(t.cache_views >= 1, "train.cache_views", t.cache_views, "must be >= 1")
    if t.cache_features:
        _check(m.freeze_backbone, "train.cache_features", True, "needs model.freeze_backbone=true")
    _check(t.epochs % m.heads == 0, "train.epochs", t.epochs,
           f"must be a multiple of model.heads={m.heads} (each head trains train.epochs / model.heads epochs)")
    ds = t.distill
    _check(ds.weight >= 0, "train.distill.weight", ds.weight, "must be >= 0")
    _check(ds.temperature > 0, "train.distill.temperature", ds.temperature, "must be > 0")
    if ds.teacher:
        _check(Path(ds.teacher).expanduser().is_file(), "train.distill.teacher", ds.teacher, "file not found")
        _check(not t.cache_features, "train.distill.teacher", ds.teacher,
               "cannot be used with train.cache_features (the teacher needs the frames, not cached features)")


def _validate_rest(cfg: Config) -> None:
    """``logging``, ``eval``, ``demo`` and rules across sections."""
    _check(cfg.model.heads == 1 or cfg.optim.scheduler == "cosine", "model.heads", cfg.model.heads,
           "> 1 needs optim.scheduler=cosine (each head gets its own warmup and cosine; plateau has no restarts)")
    _check(cfg.data.reverse_pairs != "auto" or cfg.train.cache_features, "data.reverse_pairs", "auto",
           "needs train.cache_features=true (the twins are read off the cached features)")
    _check(cfg.data.mirror_pairs != "auto" or cfg.train.cache_features, "data.mirror_pairs", "auto",
           "needs train.cache_features=true (the mirror twins are read off the cached features)")
    w = cfg.logging.wandb
    _check(w.log_videos_every >= 0, "logging.wandb.log_videos_every", w.log_videos_every, "must be >= 0 (0: never)")
    _check(bool(w.project.strip()), "logging.wandb.project", w.project, "must not be empty")

    _check(cfg.eval.num_clips >= 1, "eval.num_clips", cfg.eval.num_clips, "must be >= 1")
    _check(cfg.eval.batch_size >= 1, "eval.batch_size", cfg.eval.batch_size, "must be >= 1")
    _check(cfg.demo.stride >= 1, "demo.stride", cfg.demo.stride, "must be >= 1")
    _check(cfg.demo.smooth >= 1, "demo.smooth", cfg.demo.smooth, "must be >= 1")
    _check(cfg.demo.topk >= 1, "demo.topk", cfg.demo.topk, "must be >= 1")
    _check(cfg.demo.frame_step >= 1, "demo.frame_step", cfg.demo.frame_step, "must be >= 1")
