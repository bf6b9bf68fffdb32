"""Worker for tests/engine/test_distributed.py: real DDP training and sharded evaluation.

    torchrun --standalone --nproc_per_node=2 tests/engine/ddp_worker.py OUT_DIR [CNN_DEVICE LSTM_DEVICE]

Each rank writes ``{ddp,ddp_nan,ddp_placed}_rank{r}.pt`` (state dict after training and the
number of skipped non-finite steps) and ``eval_rank{r}.pt`` (its shard and the gathered evaluation). The test imports ``train`` and
``eval_dataset`` from this file to build the single-process references with the same code.

The backbone is timm's ``test_efficientnet_gn`` (GroupNorm, no BatchNorm): GroupNorm normalises
each frame on its own, so DDP over per-rank half batches computes exactly the gradients of one
process on the whole batch. With BatchNorm the statistics of a half batch differ from those of the
global batch, and the two runs would legitimately diverge (SyncBatchNorm fixes that, but has no CPU
kernel). Dropout is off for the same reason: masks depend on each process's RNG.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from actionrec.data.loader import build_loader, set_epoch
from actionrec.engine import distributed as D
from actionrec.engine.checkpoint import unwrap
from actionrec.engine.loop import evaluate, setup_amp, train_one_epoch
from actionrec.engine.optim import create_optimizer, create_scheduler
from actionrec.models.factory import create_model
from actionrec.models.losses import create_loss

NUM_CLASSES = 4
CLASSES = [f"c{i}" for i in range(NUM_CLASSES)]
MODEL = dict(backbone="test_efficientnet_gn", hidden_size=8, num_layers=1, dropout=0.0, lstm_dropout=0.0)
TRAIN_VIDEOS = 16
NAN_VIDEO = 5  # its clip is all NaN in the 'ddp_nan' run: only the rank holding it sees a NaN loss
EPOCHS = 2


class TensorClips(Dataset):
    """Fixed random clips in ``VideoClipDataset``'s item format (no decoding, same on every rank)."""

    def __init__(self, n: int, *, views: int = 0, clip_len: int = 4, size: int = 32):
        g = torch.Generator().manual_seed(1000 + n)
        shape = (n, views, clip_len, 3, size, size) if views else (n, clip_len, 3, size, size)
        self.clips = torch.randn(shape, generator=g)
        self.labels = [i % NUM_CLASSES for i in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __getitem__(self, i: int) -> dict:
        return {"clip": self.clips[i], "label": self.labels[i], "index": i, "failed": []}


def build_model(placement: tuple[str, str] | None = None, local_rank: int = 0):
    torch.manual_seed(0)  # identical initial weights everywhere (DDP would broadcast rank 0's anyway)
    model = create_model("cnn_lstm", num_classes=NUM_CLASSES, **MODEL)
    if placement is not None:
        model.place(*D.resolve_placement("cpu", *placement, local_rank=local_rank))
    return model


def train(*, batch_size: int, rank: int = 0, world_size: int = 1, placement: tuple[str, str] | None = None,
          nan_video: int | None = None):
    """SGD with momentum, warmup + cosine and gradient clipping for EPOCHS epochs; returns the model.

    With a process group, the model is wrapped by ``wrap_ddp``; without one, ``rank`` and
    ``world_size`` only choose the data shard (a 'no all-reduce' counterfactual).
    ``nan_video``: that clip is all NaN and ``nan_policy='skip'``; the model gets a ``skipped``
    attribute (non-finite steps skipped, summed over epochs).
    """
    model = build_model(placement, local_rank=rank)
    net = D.wrap_ddp(model) if torch.distributed.is_initialized() else model
    data = TensorClips(TRAIN_VIDEOS)
    if nan_video is not None:
        data.clips[nan_video] = float("nan")
    loader = build_loader(data, batch_size=batch_size, train=True, num_workers=0, rank=rank,
                          world_size=world_size, seed=0)
    optimizer = create_optimizer(model, "sgd", lr=0.05, weight_decay=1e-4, momentum=0.9)
    scheduler = create_scheduler(optimizer, warmup_steps=2, total_steps=EPOCHS * len(loader), min_ratio=0.1)
    autocast, scaler = setup_amp(model.input_device, "none")
    criterion = create_loss("focal", gamma=2.0).to(model.output_device)
    model.skipped = 0
    for epoch in range(EPOCHS):
        set_epoch(loader, epoch)
        out = train_one_epoch(net, loader, criterion, optimizer, scheduler, epoch=epoch, autocast=autocast,
                              scaler=scaler, clip_grad_norm=1.0, show_progress=False,
                              nan_policy="stop" if nan_video is None else "skip")
        model.skipped += out["skipped_nonfinite"]
    return net


def eval_dataset() -> TensorClips:
    return TensorClips(7, views=2)  # odd size: 2 ranks get 4 and 3 videos


def run_eval(net, rank: int, world_size: int) -> dict:
    loader = build_loader(eval_dataset(), batch_size=2, train=False, num_workers=0, rank=rank, world_size=world_size)
    autocast, _ = setup_amp(torch.device("cpu"), "none")
    criterion = create_loss("focal", gamma=2.0).to(unwrap(net).output_device)
    rep = evaluate(net, loader, criterion, class_names=CLASSES, autocast=autocast,
                   show_progress=False)
    return {"shard": torch.tensor(list(loader.sampler)), "indices": torch.from_numpy(rep["indices"]),
            "scores": torch.from_numpy(rep["scores"]), "num_videos": rep["num_videos"], "top1": rep["top1"],
            "loss": rep["loss"]}


def main(out: Path, cnn: str = "cpu", lstm: str = "cpu") -> None:
    """Train without and with placement (CPU), or only placed on (cnn, lstm) GPUs; then evaluate."""
    info = D.init_distributed("auto", device=cnn)
    assert info.world_size == 2, info
    torch.set_num_threads(1)  # two ranks share the CI machine's cores
    torch.backends.cudnn.allow_tf32 = False  # GPU runs are compared with fp32 CPU references
    D.bind_devices(list(D.resolve_placement("cpu", cnn, lstm, info.local_rank)))
    runs = {"ddp_placed": dict(placement=(cnn, lstm))}
    if cnn == "cpu":
        runs = {"ddp": {}, "ddp_nan": dict(nan_video=NAN_VIDEO), **runs}
    net = None
    for name, kwargs in runs.items():
        net = train(batch_size=2, rank=info.rank, world_size=info.world_size, **kwargs)
        state = {k: v.cpu() for k, v in unwrap(net).state_dict().items()}
        torch.save({"state": state, "skipped": unwrap(net).skipped}, out / f"{name}_rank{info.rank}.pt")
    torch.save({"backend": info.backend, **run_eval(net, info.rank, info.world_size)}, out / f"eval_rank{info.rank}.pt")
    D.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
