"""Worker for tests/engine/test_distributed.py: the bad-video limit hit on one rank stops every rank.

    torchrun --standalone --nproc_per_node=2 tests/engine/ddp_stop_worker.py OUT_DIR

Only rank 1's items report decode failures (as items that substituted an unreadable video do). Each
rank trains as tools/train.py does: ``train_one_epoch`` with ``DecodeFailures.record`` as
``on_failed``, inside ``exit_on_error``. Before stopping, each rank writes ``stop_rank{r}.json``
(its message and the seconds since the epoch started); then ``exit_on_error`` prints the one-line
``error:`` message and exits with status 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import ddp_worker as W
from actionrec.cli import exit_on_error
from actionrec.data.dataset import DecodeFailures, TooManyBadVideos
from actionrec.data.loader import build_loader
from actionrec.engine import distributed as D
from actionrec.engine.loop import setup_amp, train_one_epoch
from actionrec.engine.optim import create_optimizer, create_scheduler
from actionrec.models.losses import create_loss


class BadOnRankOne(W.TensorClips):
    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        if torch.distributed.get_rank() == 1:
            item["failed"] = [(f"/videos/bad{i:02d}.avi", "unreadable")]
        return item


def main(out: Path) -> None:
    info = D.init_distributed("gloo", device="cpu")
    torch.set_num_threads(1)
    model = W.build_model()
    net = D.wrap_ddp(model)
    data = BadOnRankOne(W.TRAIN_VIDEOS)
    loader = build_loader(data, batch_size=2, train=True, num_workers=0, rank=info.rank, world_size=info.world_size)
    optimizer = create_optimizer(model, "sgd", lr=0.01, weight_decay=0.0)
    scheduler = create_scheduler(optimizer, warmup_steps=0, total_steps=len(loader), min_ratio=1.0)
    autocast, scaler = setup_amp(torch.device("cpu"), "none")
    failures = DecodeFailures(W.TRAIN_VIDEOS, 0.1)  # more than 1.6 bad videos: rank 1's first batch has 2
    t0 = time.monotonic()
    try:
        train_one_epoch(net, loader, create_loss("ce"), optimizer, scheduler, epoch=0, autocast=autocast,
                        scaler=scaler, show_progress=False, on_failed=failures.record)
    except TooManyBadVideos as e:
        (out / f"stop_rank{info.rank}.json").write_text(json.dumps({"message": str(e), "seconds": time.monotonic() - t0}))
        raise
    D.cleanup()


if __name__ == "__main__":
    with exit_on_error():
        main(Path(sys.argv[1]))
