"""One attempt's checkpoints: file names, atomic writes, retention, resume selection, the best kept on disk.

Each epoch leaves a serving checkpoint (safetensors weights + the JSON that says how to use them) and a resumable
training state (optimizer, scheduler, RNG), both written atomically through app.ml.checkpoint with their sha256
recorded in SQL. Files are named after the attempt (`a{attempt}-e{epoch:04d}.safetensors`, `.state.pt`), so a
stale attempt never replaces a file a newer one recorded. Kept on disk: the best serving file and the last two,
and the last two training states (a corrupted newest one falls back to the one before). Every row change is
fenced by the attempt (app.job_state.fenced_write).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from app import job_state
from app.db import session_scope
from app.ml.checkpoint import CheckpointError, load_training_state, save_checkpoint, save_training_state
from app.ml.trainer import TrainingState
from app.models import Checkpoint, Epoch, Job

log = logging.getLogger("visiontune.checkpoints")

KEEP_LATEST = 2  # serving files (besides the best) and training states kept on disk

Weights = dict[str, torch.Tensor]
Metadata = dict[str, Any]


@dataclass(frozen=True)
class SavedEpoch:
    """An epoch's files, written and hashed, not yet recorded."""

    epoch: int
    path: Path
    sha256: str
    size_bytes: int
    state_path: Path
    state_sha256: str


class CheckpointStore:
    """The checkpoints of one attempt at a job, under checkpoints_dir/<job id>/."""

    def __init__(
        self,
        root: Path,
        factory: sessionmaker[Session],
        job_id: uuid.UUID,
        attempt: int,
        lease_seconds: float,
    ) -> None:
        self.folder = (root / str(job_id)).resolve()
        self.factory, self.job_id, self.attempt, self.lease_seconds = factory, job_id, attempt, lease_seconds

    # ------------------------------------------------------------ names

    def weights_path(self, epoch: int) -> Path:
        return self.folder / f"a{self.attempt}-e{epoch:04d}.safetensors"

    def state_path(self, epoch: int) -> Path:
        return self.folder / f"a{self.attempt}-e{epoch:04d}.state.pt"

    def best_path(self, epoch: int) -> Path:
        """Where a best checkpoint is written again after retention pruned it."""
        return self.folder / f"a{self.attempt}-e{epoch:04d}-best.safetensors"

    # ------------------------------------------------------------ each epoch

    def save(self, epoch: int, weights: Weights, metadata: Metadata, state: TrainingState) -> SavedEpoch:
        """Write the epoch's serving checkpoint and training state (each atomic: temp file, fsync, replace)."""
        path, state_path = self.weights_path(epoch), self.state_path(epoch)
        digest, size = save_checkpoint(path, weights, metadata)
        state_digest, _ = save_training_state(state_path, state)
        return SavedEpoch(epoch, path, digest, size, state_path, state_digest)

    def record(self, s: Session, saved: SavedEpoch, *, val_accuracy: float | None, is_best: bool) -> list[Path]:
        """The epoch's checkpoint row (in the caller's fenced unit of work), and retention: the files no longer
        kept, to be removed once that unit of work has committed (`discard`)."""
        if is_best:
            s.execute(update(Checkpoint).where(Checkpoint.job_id == self.job_id).values(is_best=False))
        s.add(
            Checkpoint(
                job_id=self.job_id,
                epoch=saved.epoch,
                path=str(saved.path),
                sha256=saved.sha256,
                size_bytes=saved.size_bytes,
                val_accuracy=val_accuracy,
                is_best=is_best,
                state_path=str(saved.state_path),
                state_sha256=saved.state_sha256,
            )
        )
        s.flush()
        stale: list[Path] = []
        older = select(Checkpoint).where(
            Checkpoint.job_id == self.job_id, Checkpoint.epoch <= saved.epoch - KEEP_LATEST
        )
        for ckpt in s.scalars(older):
            if not ckpt.is_best and not ckpt.pruned:
                ckpt.pruned = True
                stale.append(Path(ckpt.path))
            if ckpt.state_path:
                stale.append(Path(ckpt.state_path))
                ckpt.state_path, ckpt.state_sha256 = None, None
        return stale

    @staticmethod
    def discard(files: list[Path]) -> None:
        for path in files:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------ resume

    def resume(self) -> TrainingState | None:
        """The newest training state whose file matches its sha256; the epochs after it are forgotten (fenced).

        A corrupted or missing newest file falls back to the one before. Epoch and checkpoint rows (and files)
        after the state that is used are deleted, so the history still has every epoch exactly once when this
        attempt recomputes them; the best flag goes back to the best epoch the state knows.
        """
        with session_scope(self.factory) as s:
            rows = s.execute(
                select(Checkpoint.epoch, Checkpoint.state_path, Checkpoint.state_sha256)
                .where(Checkpoint.job_id == self.job_id, Checkpoint.state_path.is_not(None))
                .order_by(Checkpoint.epoch.desc())
            ).all()
            last_recorded = s.scalar(select(Job.last_epoch).where(Job.id == self.job_id))
        state: TrainingState | None = None
        for epoch, path, digest in rows:
            try:
                state = load_training_state(Path(str(path)), str(digest))
                break
            except CheckpointError as exc:
                log.error("job %s: cannot resume from epoch %s: %s", self.job_id, epoch, exc)
        resumed = int(state["epoch"]) if state is not None else 0
        if last_recorded is None and resumed == 0:
            return None
        forgotten: list[str] = []  # their files, removed once the rows are gone (a failed commit keeps both)
        with session_scope(self.factory) as s:
            self._fence(s)
            later = select(Checkpoint).where(Checkpoint.job_id == self.job_id, Checkpoint.epoch > resumed)
            forgotten = [p for ckpt in s.scalars(later) for p in (ckpt.path, ckpt.state_path) if p]
            s.execute(delete(Checkpoint).where(Checkpoint.job_id == self.job_id, Checkpoint.epoch > resumed))
            s.execute(delete(Epoch).where(Epoch.job_id == self.job_id, Epoch.epoch > resumed))
            s.execute(update(Checkpoint).where(Checkpoint.job_id == self.job_id).values(is_best=False))
            if state is not None:
                s.execute(
                    update(Checkpoint)
                    .where(Checkpoint.job_id == self.job_id, Checkpoint.epoch == int(state["best_epoch"]))
                    .values(is_best=True)
                )
            self._fence(s, last_epoch=resumed or None, last_step=state["step"] if state is not None else None)
        for p in forgotten:
            Path(p).unlink(missing_ok=True)
        if state is None:
            log.warning("job %s: no usable training state; starting again from epoch 1", self.job_id)
        else:
            log.info("job %s attempt %s resumes after epoch %s", self.job_id, self.attempt, resumed)
        return state

    # ------------------------------------------------------------ the outcome

    def best(
        self, s: Session, weights: Callable[[], Weights], metadata: Callable[[int, float | None], Metadata]
    ) -> Checkpoint:
        """The best checkpoint's row, its file written again from the model if it is gone.

        A resume that fell back past the epoch that superseded this best pruned its file then; the model holds
        the best weights now (fit restores them), so they are written again under this attempt's name.
        """
        best = s.scalar(select(Checkpoint).where(Checkpoint.job_id == self.job_id, Checkpoint.is_best.is_(True)))
        assert best is not None, f"job {self.job_id} has no best checkpoint"
        if best.pruned or not Path(best.path).is_file():
            path = self.best_path(best.epoch)
            best.sha256, best.size_bytes = save_checkpoint(path, weights(), metadata(best.epoch, best.val_accuracy))
            best.path, best.pruned = str(path), False
        return best

    def _fence(self, s: Session, **values: Any) -> None:
        job_state.fenced_write(s, self.job_id, self.attempt, self.lease_seconds, **values)
