"""The child process of one row: read the row's spec, time the row, write its figures."""

from __future__ import annotations

import json
from pathlib import Path

from . import (
    row1_library_sequential,
    row2_library_batched,
    row3_funasr_server,
    row4_serve,
    row5_ray_data,
    row6_floor,
)
from .harness import _set_threads

ROW_RUNNERS = {
    "1": row1_library_sequential.run,
    "2": row2_library_batched.run,
    "3": row3_funasr_server.row_funasr_server,
    "4": row4_serve.row_serve,
    "5": row5_ray_data.row_ray_data,
    "6": row6_floor.row_floor,
}


def run_worker(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    _set_threads(spec["threads"])
    row = spec["row"]
    if row not in ROW_RUNNERS:
        raise ValueError(row)
    out = ROW_RUNNERS[row](spec)
    Path(spec["out"]).write_text(json.dumps(out))
    return 0
