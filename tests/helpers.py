"""Helpers shared by tests: repo paths, loading tools/*.py as modules, tiny training overrides."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_module(name: str, path: Path):
    """Import the file ``path`` as module ``name`` (scripts and test helpers are not in a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    return load_module(f"actionrec_tool_{name}", REPO / "tools" / f"{name}.py")


def tiny_overrides(root: Path, out_dir: Path) -> list[str]:
    """Overrides that make tools/train.py run in seconds on the ``tiny_dataset`` fixture."""
    return [
        f"data.root={root}",
        f"train.output_dir={out_dir}",
        "data.clip_len=4",
        "data.resize_short=40",
        "data.crop_size=32",
        "data.num_workers=0",
        "model.backbone=test_resnet",
        "model.hidden_size=16",
        "train.batch_size=4",
        "train.epochs=1",
        "train.device=cpu",
        # The automatic count follows machine load; runs compared weight for weight (resume) need the same.
        "train.cpu_threads=1",
        "eval.batch_size=4",
        "logging.wandb.mode=disabled",
    ]


def long_functions(limit: int = 80, folders: tuple[str, ...] = ("actionrec", "tools", "data_prep")) -> dict[str, int]:
    """``"path:function": lines`` for every function (or method) of more than ``limit`` lines under ``folders``."""
    import ast

    found = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        found[f"{path.relative_to(REPO).as_posix()}:{node.name}"] = lines
    return found
