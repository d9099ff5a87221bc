"""Training logs: CSV files always, TensorBoard when it is installed and asked for."""
from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Any, Callable


class CSVLogger:
    """Appends one row per call to a CSV file; the header is written once, when the file is new or empty.

    The columns are fixed by the existing header, or else by the first row logged; a later row with a
    key outside them is an error (silently dropping a metric would be worse).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.fieldnames: list[str] | None = self._read_header()

    def _read_header(self) -> list[str] | None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return None
        with self.path.open(newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), None)

    def log(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = self.fieldnames is None
        if new_file:
            self.fieldnames = list(row)
        unknown = [key for key in row if key not in self.fieldnames]
        if unknown:
            raise ValueError(f"row: columns {unknown} are not in the header of {self.path}")
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fieldnames)
            if new_file:
                writer.writeheader()
            writer.writerow({key: _plain(value) for key, value in row.items()})

    def keep_rows(self, keep: Callable[[dict[str, str]], bool]) -> None:
        """Rewrite the file (atomically) with only the rows for which `keep(row)` is true.

        Used on resume: rows logged after the checkpoint being resumed from would otherwise appear twice.
        """
        if self.fieldnames is None:
            return
        with self.path.open(newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if keep(row)]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class TensorBoardLogger:
    """Thin SummaryWriter wrapper; a no-op (with one warning) when TensorBoard cannot be imported."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # tensorboard is optional: the CSV log still has everything
            warnings.warn(f"TensorBoard logging skipped: {exc}", stacklevel=2)
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, values: dict[str, Any], prefix: str) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class RunLogger:
    """The logs of one run folder: steps.csv (every few steps), epochs.csv (one row per epoch), tensorboard/."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = False) -> None:
        run_dir = Path(run_dir)
        self.steps = CSVLogger(run_dir / "steps.csv")
        self.epochs = CSVLogger(run_dir / "epochs.csv")
        self.tensorboard = TensorBoardLogger(run_dir / "tensorboard") if tensorboard else None

    def log_step(self, step: int, values: dict[str, Any]) -> None:
        self.steps.log({"step": step, **values})
        if self.tensorboard:
            self.tensorboard.log(step, values, "train")

    def log_epoch(self, epoch: int, values: dict[str, Any]) -> None:
        self.epochs.log({"epoch": epoch, **values})
        if self.tensorboard:
            self.tensorboard.log(epoch, values, "dev")

    def truncate(self, epochs_done: int) -> None:
        """Keep only rows of epochs 1..`epochs_done` (later ones belong to a part of the run being redone)."""
        for logger in (self.steps, self.epochs):
            logger.keep_rows(lambda row: row.get("epoch") not in (None, "") and int(row["epoch"]) <= epochs_done)

    def close(self) -> None:
        if self.tensorboard:
            self.tensorboard.close()

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
