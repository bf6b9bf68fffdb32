"""Worker for tests/engine/test_distributed.py: the twin search's scouts shared out over DDP ranks.

    torchrun --standalone --nproc_per_node=2 tests/engine/ddp_scout_worker.py OUT_DIR

Each rank runs ``scout_scores`` with its rank, the world size and ``gather_objects``, and writes
``scouts_rank{r}.pt``: the scores (reversed and mirrored) and the seeds of the scouts it trained.
The test imports ``scout_inputs`` and ``SCOUT_KW`` to compute the one-process scores with the same data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from actionrec.data.reversal import scout_scores
from actionrec.engine import distributed as D
from actionrec.models.factory import create_model
from actionrec.models.losses import FocalLoss

NUM_CLASSES = 4
SCOUT_KW = dict(epochs=3, batch_size=8, lr=3e-3, seed=5)


def scout_inputs():
    """Cached (V, T, D) views of 4 classes (channel 0 rises / falls, channel 1 rises, channel 2 falls)
    and their labels, the same in every process."""
    g = torch.Generator().manual_seed(0)
    d = new_model().feature_dim
    t = torch.linspace(-1, 1, 6)
    views, labels = [], []
    for c, (ch, sign, n) in enumerate([(0, 1, 10), (0, -1, 6), (1, 1, 8), (2, -1, 8)]):
        v = 0.3 * torch.randn(n, 2, 6, d, generator=g)
        v[..., ch] += 2 * sign * t
        views += list(v)
        labels += [c] * n
    return views, labels


def new_model(built: list | None = None):
    """A scout's model; ``built`` collects the seed each scout was built under."""
    if built is not None:
        built.append(torch.initial_seed())  # _scout_says seeds torch before it builds scout k
    return create_model("cnn_lstm", num_classes=NUM_CLASSES, backbone="test_resnet", pretrained=False,
                        temporal="lstm", hidden_size=8, freeze_backbone=True)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist = D.init_distributed("gloo")
    views, labels = scout_inputs()
    built: list[int] = []
    score, mirrored = scout_scores(lambda: new_model(built), views, labels, NUM_CLASSES, criterion=FocalLoss(),
                                   mirror=lambda v: v.flip(-1), rank=dist.rank, world_size=dist.world_size,
                                   gather=D.gather_objects, **SCOUT_KW)
    torch.save({"score": score, "mirrored": mirrored, "built": built}, out / f"scouts_rank{dist.rank}.pt")
    D.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
