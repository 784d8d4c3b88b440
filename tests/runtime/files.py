"""What the runtime tests write and read: IDX files (as the format describes them) and a run's
metrics.jsonl."""
import json
import struct
from pathlib import Path

import numpy as np


def idx_bytes(a: np.ndarray) -> bytes:
    """An IDX file written from the format description: 0, 0, type 0x08, ndim, big-endian dims, data."""
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def metrics(run) -> list[dict]:
    """The records of a run folder's metrics.jsonl, one per epoch."""
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
