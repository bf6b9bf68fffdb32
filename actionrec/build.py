"""Config -> builder adapters shared by the tools (train, eval, demo, export, benchmark).

Besides ``config.py`` this is the only module that reads ``Config``: each function turns one
config section into explicit keyword arguments for a builder under ``data/``, ``models/`` or
``engine/``, which themselves take plain arguments only.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from actionrec.config import Config, DataConfig, ModelConfig
from actionrec.data.dataset import DecodeFailures, VideoClipDataset, class_counts
from actionrec.data.reversal import (TimeReversal, match_twins, probe_scores, reverse_pairs_to_indices,
                                     scout_scores, twin_groups, twin_report)
from actionrec.data.loader import BALANCE_POWER, build_loader
from actionrec.data.mirror import Mirror, flip_frames, mirror_labels, mirror_report, self_scores
from actionrec.data.splits import DatasetSplit, load_split
from actionrec.data.synthetic import ensure_synthetic_dataset
from actionrec.data.transforms import eval_transform, train_transform
from actionrec.errors import UsageError
from actionrec.models.factory import create_model
from actionrec.models.losses import create_loss, inverse_frequency_alpha

log = logging.getLogger(__name__)


def dataset_root(data: DataConfig) -> Path:
    """The dataset folder; the built-in synthetic dataset is generated on first use."""
    if data.root:
        root = Path(data.root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root} (data.root)")
        return root
    cache = Path(data.cache_dir).expanduser() / "synthetic"
    return ensure_synthetic_dataset(cache, progress=True)


def dataset_split(data: DataConfig) -> DatasetSplit:
    root = dataset_root(data)
    return load_split(root, split=data.split, split_dir=Path(data.split_dir).expanduser() if data.split_dir else None)


def checkpoint_split(data: DataConfig, classes: list[str], checkpoint: str | Path) -> DatasetSplit:
    """The dataset split a checkpoint is evaluated on; its classes (names and order) must be the checkpoint's.

    Raises:
        UsageError: the dataset has other classes than the ones ``checkpoint`` was trained on.
    """
    split = dataset_split(data)
    if list(split.classes) != list(classes):
        raise UsageError(f"{checkpoint}: trained on classes {list(classes)}, but the dataset has {list(split.classes)}")
    return split


def transform_kwargs(data: DataConfig) -> dict:
    return dict(resize_short=data.resize_short, crop_size=data.crop_size, mean=data.mean, std=data.std)


def train_transform_from(data: DataConfig):
    return train_transform(
        **transform_kwargs(data),
        crop_scale=data.crop_scale,
        crop_ratio=data.crop_ratio,
        hflip=data.hflip,
        color_jitter=data.color_jitter,
        occlusion=data.occlusion,
    )


def eval_transforms_from(data: DataConfig, num_crops: int = 1) -> list:
    crops = ["center"] if num_crops == 1 else ["left", "center", "right"]
    return [eval_transform(**transform_kwargs(data), crop=c) for c in crops]


def sampling_spec(data: DataConfig) -> dict:
    """``data.sampling`` as ``eval_clip_indices``' keywords besides clip_len and num_clips (export and serve metadata)."""
    s = data.sampling
    return {"mode": s.mode, "frame_interval": s.frame_interval, "short_video": s.short_video}


def test_twins_from(cfg: Config, classes) -> list[int] | None:
    """``eval.reverse_views``: each class's time-reversed twin by index, -1 for none (``CNNLSTM.set_test_twins``),
    from ``data.reverse_pairs``; None when off, without pairs, or for ``auto`` until the pairs are found.

    Raises:
        ConfigError: a named class is not one of ``classes``.
    """
    reversal = reversal_from(cfg, classes) if cfg.eval.reverse_views else None
    return None if reversal is None else [reversal.twin.get(c, -1) for c in range(len(classes))]


def reversal_from(cfg: Config, classes, backwards=None) -> TimeReversal | None:
    """``data.reverse_pairs`` as a ``TimeReversal`` playing clips backwards with ``backwards`` (None:
    flipped along time; the feature cache's head inputs: ``CNNLSTM.reverse_inputs``); None without
    pairs, and for ``auto`` until ``find_twins_from`` has replaced it by the pairs found.

    Raises:
        ConfigError: a named class is not one of ``classes``.
    """
    if not cfg.data.reverse_pairs or cfg.data.reverse_pairs == "auto":
        return None
    return TimeReversal(reverse_pairs_to_indices(cfg.data.reverse_pairs, list(classes)), cfg.data.reverse_prob,
                        seed=cfg.train.seed, backwards=backwards)


def mirror_from(cfg: Config, classes, flip=flip_frames) -> Mirror | None:
    """``data.mirror_pairs`` as a ``Mirror`` flipping clips with ``flip`` (frames; the feature cache's
    head inputs: ``CNNLSTM.mirror_inputs``); None without pairs, and for ``auto`` until ``find_twins_from``
    has replaced it by what it found.

    Raises:
        ConfigError: a named class is not one of ``classes``.
    """
    if not cfg.data.mirror_pairs or cfg.data.mirror_pairs == "auto":
        return None
    pairs = reverse_pairs_to_indices(cfg.data.mirror_pairs, list(classes), key="data.mirror_pairs")
    return Mirror(pairs, flip, cfg.data.mirror_prob, seed=cfg.train.seed)


def train_dataset(cfg: Config, split: DatasetSplit, *, reverse: bool = True) -> VideoClipDataset:
    """The training clips; ``reverse=False`` leaves out ``data.reverse_pairs`` and ``data.mirror_pairs``
    (the feature cache's views, which reverse and mirror at read time)."""
    return VideoClipDataset(
        split.train,
        sampling=cfg.data.sampling,
        transforms=[train_transform_from(cfg.data)],
        train=True,
        backend=cfg.data.backend,
        seek=cfg.data.seek,
        seed=cfg.train.seed,
        reversal=reversal_from(cfg, split.classes) if reverse else None,
        mirror=mirror_from(cfg, split.classes) if reverse else None,
    )


def eval_dataset(cfg: Config, samples, *, num_clips: int, num_crops: int = 1) -> VideoClipDataset:
    return VideoClipDataset(
        samples,
        sampling=replace(cfg.data.sampling, num_clips=num_clips),
        transforms=eval_transforms_from(cfg.data, num_crops),
        train=False,
        backend=cfg.data.backend,
        seek=cfg.data.seek,
        seed=cfg.train.seed,
    )


def loader_kwargs(cfg: Config, *, rank: int = 0, world_size: int = 1, pin_memory: bool = False, **changes) -> dict:
    """``build_loader``'s keywords from ``data`` (workers, timeout) for this process; ``changes`` win."""
    kw = dict(num_workers=cfg.data.num_workers, rank=rank, world_size=world_size, pin_memory=pin_memory,
              timeout=cfg.data.loader_timeout)
    return {**kw, **changes}


def eval_loader(cfg: Config, dataset, **loader_kw):
    """The evaluation loader (``eval.batch_size``, every item once); ``loader_kw`` as ``loader_kwargs``."""
    return build_loader(dataset, batch_size=cfg.eval.batch_size, train=False, **loader_kwargs(cfg, **loader_kw))


def train_val_loaders(cfg: Config, train_ds, val_ds, **loader_kw) -> tuple:
    """(train loader: ``train.batch_size``, ``data.balance``, seeded by ``train.seed``; validation loader)."""
    kw = loader_kwargs(cfg, seed=cfg.train.seed, **loader_kw)
    train_loader = build_loader(train_ds, batch_size=cfg.train.batch_size, train=True, labels=train_ds.labels,
                                balance=cfg.data.balance, **kw)
    return train_loader, build_loader(val_ds, batch_size=cfg.eval.batch_size, train=False, **kw)


@dataclass
class TrainData:
    """What training reads: class names, datasets, loaders and the decode-failure budget."""

    classes: list[str]
    train_ds: Any
    val_ds: Any
    train_loader: Any
    val_loader: Any
    failures: DecodeFailures


def train_data(cfg: Config, split: DatasetSplit, **loader_kw) -> TrainData:
    """Train and validation (``train.val_clips`` clips) datasets and loaders; ``loader_kw`` as ``loader_kwargs``."""
    train_ds, val_ds = train_dataset(cfg, split), eval_dataset(cfg, split.test, num_clips=cfg.train.val_clips)
    loaders = train_val_loaders(cfg, train_ds, val_ds, **loader_kw)
    return TrainData(list(split.classes), train_ds, val_ds, *loaders,
                     DecodeFailures(len(train_ds) + len(val_ds), cfg.data.max_bad_fraction))


def use_cached_features(cfg: Config, data: TrainData, split: DatasetSplit, model, *, rank: int = 0,
                        world_size: int = 1, barrier=lambda: None, on_cached=lambda: None, **loader_kw) -> Config:
    """``train.cache_features``: ``data``'s loaders read the frozen backbone's features (``feature_datasets``).

    ``on_cached()`` runs once the features are there, before the twin search: from then on only this
    process works (tools/train.py chooses its CPU threads again without the decode workers).
    Returns ``cfg``, with ``data.reverse_pairs=auto`` and ``data.mirror_pairs=auto`` replaced by the
    pairs found (``find_twins_from``). The loaders then hold ``model.head_inputs`` of the cached
    features, which ``model`` reads from then on (``read_head_inputs``), reversed and mirrored by
    ``reverse_inputs`` and ``mirror_inputs``.
    """
    import torch

    train_feats, val_feats, bad = feature_datasets(cfg, split, model, rank=rank, world_size=world_size,
                                                   barrier=barrier)
    data.failures.add(bad)
    on_cached()
    search = "auto" in (cfg.data.reverse_pairs, cfg.data.mirror_pairs)
    # The twin search's probe reads the features; the scouts and the head read head inputs.
    features = [torch.cat(views) for views, _, _ in train_feats.items] if search else []  # (V, T, D) per video
    # The head's parameter-free part (the motion correlation) once per cached clip, not every epoch.
    train_feats.map_views(model.head_inputs)
    val_feats.map_views(model.head_inputs)
    model.read_head_inputs()
    if search:
        cfg = find_twins_from(cfg, features, train_feats, model, list(split.classes), rank=rank, world_size=world_size)
    train_feats.reversal = reversal_from(cfg, split.classes, model.reverse_inputs)
    train_feats.mirror = mirror_from(cfg, split.classes, model.mirror_inputs)
    # In-memory tensors: worker processes would only add overhead.
    data.train_loader, data.val_loader = train_val_loaders(cfg, train_feats, val_feats, rank=rank,
                                                           world_size=world_size, num_workers=0, **loader_kw)
    return cfg


def find_twins_from(cfg: Config, features, train_feats, model, classes: list[str], *, rank: int = 0,
                    world_size: int = 1) -> Config:
    """``data.reverse_pairs=auto`` and ``data.mirror_pairs=auto``: the twins read off the cached training
    features (every view), logged with their scores. ``features``: each training video's (V, T, D)
    cached views, which the probe reads; ``train_feats`` holds their ``model.head_inputs``, on which
    the scouts train.

    Time: a linear probe on ``model.order_summary`` of the clips forwards and backwards says where
    twins may be (``probe_scores``, ``twin_groups``); when it does, fresh scout models of the same
    config, their heads trained on the forward clips, say which classes pair up there
    (``scout_scores``, ``match_twins``). Mirror: the same scouts label every clip mirrored
    (``model.mirror_inputs``), and ``mirror_labels`` reads off which classes look the same, which
    swap and which neither. Under DDP the ranks search rank 0's groups and share the scouts out
    (``rank``, ``world_size``); the gathered scores are the same on every rank to the bit, and so are
    the pairs. Returns ``cfg`` with the pairs found
    in place of ``auto`` (none: ``[]``; a class flipped as it is: ``[C, C]``)."""
    import time

    import torch

    from actionrec.engine.distributed import gather_objects

    start = time.perf_counter()
    reverse, mirror = cfg.data.reverse_pairs == "auto", cfg.data.mirror_pairs == "auto"
    groups, found, close, flips, said = [], [], [], None, None
    if reverse:
        fwd = torch.stack([model.order_summary(v).cpu() for v in features])
        bwd = torch.stack([model.order_summary(v.flip(1)).cpu() for v in features])
        probe = probe_scores(fwd, bwd, train_feats.labels, len(classes))
        groups = gather_objects(twin_groups(probe))[0]  # rank 0's: every rank then trains its scouts, or none does
    if groups or mirror:
        # The scouts see forward clips only, and have one head each.
        plain = replace(cfg, data=replace(cfg.data, reverse_pairs=(), mirror_pairs=()), model=replace(cfg.model, heads=1))
        inputs = [torch.cat(views) for views, _, _ in train_feats.items]  # (V, T, H) per video
        scout, said = scout_scores(lambda: model_from(plain, len(classes)).place(model.input_device, model.output_device)
                                   .read_head_inputs(), inputs, train_feats.labels, len(classes),
                                   criterion=loss_from(plain, train_feats.labels, classes).to(model.output_device),
                                   mirror=model.mirror_inputs if mirror else None, backwards=model.reverse_inputs,
                                   batch_size=cfg.train.batch_size, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                   seed=cfg.train.seed, rank=rank, world_size=world_size, gather=gather_objects)
        found, close = match_twins(scout, groups)
    if mirror:  # time-reversed twins look the same mirrored or neither does (mirror.self_scores)
        twins = [(a, b) for a, b, _ in found] if reverse else reverse_pairs_to_indices(cfg.data.reverse_pairs, classes)
        itself = self_scores(said, class_counts(train_feats.labels, len(classes)), twins)
        flips = mirror_labels(said, itself=itself)
    data = cfg.data
    if reverse:
        log.info("data.reverse_pairs=auto: %s", twin_report(found, probe, groups, classes, close))
        data = replace(data, reverse_pairs=tuple((classes[a], classes[b]) for a, b, _ in found))
    if mirror:
        log.info("data.mirror_pairs=auto: %s", mirror_report(flips, said, classes, itself=itself))
        data = replace(data, mirror_pairs=tuple((classes[a], classes[b]) for a, b in flips))
    log.info("twins found in %.0f s", time.perf_counter() - start)
    return replace(cfg, data=data)


def scheduler_from(cfg: Config, optimizer, steps_per_epoch: int):
    """The learning-rate schedule of ``optim`` over ``train.epochs``, counted in optimizer updates; with
    ``model.heads`` > 1 its warmup and cosine run once per head, over that head's epochs."""
    from actionrec.engine.optim import create_scheduler, updates_per_epoch

    o, updates, heads = cfg.optim, updates_per_epoch(steps_per_epoch, cfg.optim.accum_steps), cfg.model.heads
    return create_scheduler(optimizer, warmup_steps=int(o.warmup_epochs * updates),
                            total_steps=cfg.train.epochs // heads * updates, min_ratio=o.min_lr_ratio, kind=o.scheduler,
                            patience=o.plateau_patience, factor=o.plateau_factor, cycles=heads)


def model_kwargs(m: ModelConfig) -> dict:
    """``create_model``'s keywords: each ``model`` key but ``placement`` (where the tools put the parts)
    is a keyword of the same name."""
    return {f.name: getattr(m, f.name) for f in fields(m) if f.name != "placement"}


def model_from(cfg: Config, num_classes: int):
    return create_model("cnn_lstm", num_classes=num_classes, **model_kwargs(cfg.model))


def distiller_from(cfg: Config, class_names: list[str], cnn_device, head_device, autocast):
    """``train.distill``: the teacher checkpoint as an ``engine.distill.Distiller``, or None without one.

    Raises:
        ValueError: the teacher was trained on other classes (names or order) than the student's dataset.
        CheckpointError: the teacher file is not a loadable checkpoint.
    """
    d = cfg.train.distill
    if not d.teacher:
        return None
    from actionrec.engine.distill import Distiller

    _, teacher, teacher_classes = model_from_checkpoint(Path(d.teacher).expanduser())
    if teacher_classes != list(class_names):
        raise ValueError(f"train.distill.teacher={d.teacher}: the teacher was trained on classes {teacher_classes}, "
                         f"the student's dataset has {list(class_names)}")
    log.info("distilling from %s: weight %g, temperature %g", d.teacher, d.weight, d.temperature)
    return Distiller(teacher.place(cnn_device, head_device), weight=d.weight, temperature=d.temperature,
                     autocast=autocast)


def _expected_counts(moves, counts) -> list[float]:
    """Per-class clips per epoch after time reversal and mirroring move some to their twin (in that order)."""
    for move in moves:
        counts = move.expected_counts(counts)
    return list(counts)


def loss_from(cfg: Config, train_labels: list[int], classes: list[str]):
    """The loss of ``loss``; ``alpha=auto`` weighs the classes by the inverse of how many training
    clips each gets per epoch (``data.reverse_pairs`` moves some to their twin); ``logit_adjust``
    shifts the loss's logits by tau * log of that share (with ``data.balance``: of the share drawn)."""
    num_classes = len(classes)
    alpha, tau = cfg.loss.alpha, cfg.loss.logit_adjust
    counts = class_counts(train_labels, num_classes)
    moves = [m for m in (reversal_from(cfg, classes), mirror_from(cfg, classes)) if m is not None]
    per_epoch = _expected_counts(moves, counts)
    if alpha == "auto":
        alpha = inverse_frequency_alpha(per_epoch)
    elif isinstance(alpha, list) and len(alpha) != num_classes:
        raise ValueError(f"loss.alpha has {len(alpha)} weights but the dataset has {num_classes} classes")
    shift = None
    if tau > 0:  # the prior: each class's share of an epoch's clips, as data.balance draws them
        drawn = [float(c) ** (1.0 - BALANCE_POWER.get(cfg.data.balance, 0.0)) if c else 0.0 for c in counts]
        prior = [max(c, 1e-3) for c in _expected_counts(moves, drawn)]  # not log(0)
        shift = [tau * math.log(c / sum(prior)) for c in prior]
    return create_loss(cfg.loss.name, gamma=cfg.loss.gamma, alpha=alpha, label_smoothing=cfg.loss.label_smoothing,
                       logit_shift=shift)


def optimizer_kwargs(cfg: Config) -> dict:
    o = cfg.optim
    return dict(
        lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum, betas=o.betas, backbone_lr_mult=o.backbone_lr_mult
    )


def loop_kwargs(cfg: Config) -> dict:
    """``train_one_epoch``'s keywords from ``optim`` and ``train``."""
    return dict(accum_steps=cfg.optim.accum_steps, clip_grad_norm=cfg.optim.clip_grad_norm,
                nan_policy=cfg.train.nan_policy, max_steps=cfg.train.max_steps_per_epoch, log_every=cfg.train.log_every,
                save_every_steps=cfg.train.save_every_steps)


def checkpoint_saver(cfg: Config, run_dir: Path):
    """last.pt plus the best ``train.keep_best`` checkpoints by ``train.best_metric`` (a loss ranks low first)."""
    from actionrec.engine.checkpoint import CheckpointSaver

    return CheckpointSaver(run_dir, cfg.train.keep_best, metric=cfg.train.best_metric,
                           higher_is_better=cfg.train.best_metric != "loss")


WANDB_MODES = {"offline": "offline", "online": "online", "disabled": "disabled", "dryrun": "offline", "run": "online"}


def wandb_mode(cfg: Config) -> str:
    """The W&B mode in force: ``WANDB_MODE`` when set overrides ``logging.wandb.mode``.

    Except that ``disabled`` in the config always wins: an explicit opt-out must not start
    writing W&B files because some shell or CI exported ``WANDB_MODE=offline``.
    """
    if cfg.logging.wandb.mode == "disabled":
        return "disabled"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if not env:
        return cfg.logging.wandb.mode
    if env not in WANDB_MODES:
        raise ValueError(f"WANDB_MODE={env!r}: use offline, online or disabled")
    return WANDB_MODES[env]


def wandb_kwargs(cfg: Config, run_dir: Path, *, resume_id: str | None = None) -> dict | None:
    """Arguments for ``wandb.init`` (None when W&B is disabled); a resumed run keeps its id."""
    w = cfg.logging.wandb
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return None
    from actionrec.config import config_to_dict

    kwargs = dict(
        mode=mode,
        project=w.project,
        entity=w.entity or None,
        name=w.name or cfg.train.name or Path(run_dir).name,
        tags=list(w.tags) or None,
        group=w.group or None,
        notes=w.notes or None,
        config=config_to_dict(cfg),
    )
    if resume_id:
        kwargs.update(id=resume_id, resume="allow")
    return kwargs


def wandb_videos_due(cfg: Config, epoch: int) -> bool:
    """Whether validation clips go to W&B after 0-based ``epoch``: every N epochs and the last one."""
    every = cfg.logging.wandb.log_videos_every
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == cfg.train.epochs)


def feature_datasets(cfg: Config, split: DatasetSplit, model, *, rank: int = 0, world_size: int = 1,
                     barrier=lambda: None):
    """``train.cache_features``: the frozen backbone's features of every train and val video.

    Computed once and kept under ``<data.cache_dir>/features`` (keyed by backbone weights, transform,
    sampling, decoder, precision, file identity and, for augmented views, seed and view number).
    ``train.cache_views=1``: training videos use the eval sampling and centre crop, so a video's
    clip is the same every epoch. K > 1: K clips of the train pipeline per video (epochs 0..K-1 of
    its random draws), and training epoch e reads view e mod K.

    Returns:
        (train FeatureDataset, val FeatureDataset, (path, reason) of videos that failed to decode).
    """
    from actionrec.engine.feature_cache import FeatureCache, FeatureDataset, extract_features
    from actionrec.engine.loop import resolve_amp, setup_amp

    device = model.input_device
    autocast, _ = setup_amp(device, cfg.train.amp)
    precision = f"{device.type}:{resolve_amp(device, cfg.train.amp)}"  # 'auto' differs between GPU generations
    root = Path(cfg.data.cache_dir).expanduser() / "features"
    kw = dict(batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers, autocast=autocast)
    views = cfg.train.cache_views
    jobs = [(train_dataset(cfg, split, reverse=False) if views > 1 else eval_dataset(cfg, split.train, num_clips=1),
             views, True),
            (eval_dataset(cfg, split.test, num_clips=cfg.train.val_clips), 1, False)]
    out, failed = [], []
    for ds, num_views, train in jobs:
        caches = []
        for v in range(num_views):
            ds.set_epoch(v)  # view v of an augmented training set draws what training epoch v would
            cache = FeatureCache(root, backbone_name=cfg.model.backbone, backbone=model.backbone,
                                 feature_grid=cfg.model.feature_grid, transforms=ds.transforms,
                                 sampling=ds.sampling, backend=ds.backend, seek=ds.seek, precision=precision,
                                 view=(cfg.train.seed, v) if num_views > 1 else None,
                                 motion=(cfg.model.motion != "none") and cfg.model.motion_map,
                                 contrast=cfg.model.contrast and cfg.model.contrast_grid)
            bad = extract_features(model, ds, cache, rank=rank, world_size=world_size, **kw)
            if world_size > 1:  # every rank's share is on disk; retrying what is still missing lists all failures
                barrier()
                bad = extract_features(model, ds, cache, **kw)
            failed += bad
            caches.append(cache)
        out.append(FeatureDataset(ds, caches, train=train))
    return out[0], out[1], sorted(set(failed))


def model_from_checkpoint(path: str | Path, overrides: tuple[str, ...] | list[str] = ()):
    """Load a checkpoint for inference (demo, export): its config, the model in eval mode, class names.

    The caller picks the device and precision it runs at (demo and export: fp32); the checkpoint's
    ``train.device`` and ``train.amp`` describe how it was trained and are not applied here.

    Returns:
        (config, CNNLSTM on the CPU in eval mode with the checkpoint's weights, class names).

    Raises:
        CheckpointError: missing or unreadable file, or a config/weights this code cannot rebuild.
    """
    from actionrec.config import config_from_checkpoint
    from actionrec.engine.checkpoint import CheckpointError, load_checkpoint, load_weights

    ckpt = load_checkpoint(path)
    classes = [str(c) for c in ckpt.get("class_names") or []]
    if not classes or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path}: incompatible checkpoint: no class names or config stored")
    try:
        cfg = config_from_checkpoint(ckpt["config"], overrides)
        model = model_from(cfg, len(classes))
    except (ValueError, RuntimeError, KeyError) as e:  # ConfigError is a ValueError
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: incompatible checkpoint: {detail}") from None
    if ckpt.get("pruned"):  # tools/prune.py: the config's model with the recorded channel counts
        from actionrec.models.pruning import apply_architecture

        try:
            apply_architecture(model, ckpt["pruned"]["modules"], ckpt["model"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: incompatible checkpoint: {e}") from None
    fc = ckpt["model"].get("head.fc.weight")
    if hasattr(fc, "shape") and fc.ndim == 2 and fc.shape[0] != len(classes):
        raise CheckpointError(f"{path}: incompatible checkpoint: {len(classes)} class names, but its "
                              f"classifier has {fc.shape[0]} outputs")
    load_weights(model, ckpt["model"], path)
    try:
        model.set_test_twins(test_twins_from(cfg, classes))
    except ValueError as e:
        raise CheckpointError(f"{path}: incompatible checkpoint: {e}") from None
    return cfg, model.eval(), classes
