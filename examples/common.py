"""What the example scripts share: the ``--out`` / ``--seed`` arguments, logging, and a seeded
full-batch / mini-batch training loop with a rich progress bar."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

log = logging.getLogger("examples")


def make_parser(description: str, default_out: str = "examples/models") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path(default_out), help=f"output folder (default {default_out})")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data and the weights (default 0)")
    return parser


def setup(args: argparse.Namespace, threads: int = 1) -> argparse.Namespace:
    """Set up logging, create ``args.out``, seed torch and cap its threads: for networks this small,
    thread synchronisation costs more than it saves (one thread is 10x faster on a busy 2-core box)."""
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", datefmt="[%X]", handlers=[RichHandler(show_path=False, markup=False)]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), threads)))
    return args


def train(
    model: nn.Module,
    x: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int | None = None,
    seed: int = 0,
    label: str = "training",
) -> float:
    """Adam on the mean squared reconstruction error; full batch when ``batch_size`` is None.
    Returns the final loss over all of ``x``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(label, total=steps, loss=float("nan"))
        for step in range(steps):
            batch = x if batch_size is None else x[torch.randint(0, len(x), (batch_size,), generator=gen)]
            opt.zero_grad()
            loss = (model(batch) - batch).pow(2).mean()
            loss.backward()
            opt.step()
            if step % 50 == 0 or step == steps - 1:
                progress.update(task, completed=step + 1, loss=loss.item())
    model.eval()
    with torch.no_grad():
        return float(torch.cat([(model(b) - b).pow(2).flatten(1).mean(1) for b in x.split(1024)]).mean())


def save_data(path: Path, x: np.ndarray | torch.Tensor) -> Path:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    np.save(path, arr.astype(np.float32))
    return path
