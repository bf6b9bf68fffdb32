#!/usr/bin/env python
"""GPU self-check: list the devices, run a few training steps of every mode, print what works.

    python tools/gpu_selfcheck.py                 # the table; exit status 1 if a mode failed
    python tools/gpu_selfcheck.py --json out.json # the rows as JSON too

Modes: fp32, bf16 and fp16 + GradScaler on cuda:0; the CNN on cuda:0 and the LSTM on cuda:1 (model
parallel); DDP over NCCL with 2 ranks (launched with torchrun); DDP with 2 GPUs per rank (4 GPUs);
SyncBatchNorm under DDP. Each trains timm's tiny test_resnet + BiLSTM on random 64 px clips through
the real training loop and reports the mean step time. A CPU step runs first, so a machine without
CUDA prints one real row and "skipped: no CUDA" for the rest, and exits 0. Run it on a new GPU
machine before a long job; tests/gpu/ (pytest -m gpu) asserts the same paths in more detail.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from actionrec.engine import selfcheck


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode, after one warm-up step (default: %(default)s)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU row")
    p.add_argument("--json", type=Path, default=None, help="also write devices and rows to this file")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))  # a tiny model: more threads only spin
    devices = selfcheck.describe_devices()
    print("devices:")
    for line in devices:
        print(f"  {line}")
    checks = selfcheck.run_checks(steps=args.steps, cpu=not args.no_cpu)
    print()
    print(selfcheck.format_table(checks))
    failed = [c.mode for c in checks if c.failed]
    print()
    print(f"{len(failed)} mode(s) failed: {', '.join(failed)}" if failed else
          f"no mode failed ({sum(c.status == 'ok' for c in checks)} ok, {sum(c.status.startswith('skipped') for c in checks)} skipped)")
    if args.json is not None:
        args.json.write_text(json.dumps({"devices": devices, "checks": [dataclasses.asdict(c) for c in checks]}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
