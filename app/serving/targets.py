"""What each model name serves in this API process, and switches that drop nothing.

When what a name resolves to changes (a better job, a promotion, an alias move, a rollback, another backend),
the new target is loaded and warmed up (one forward) in the background while requests keep being answered by
the one that served before; once warm, it takes the traffic. Requests in flight finish on the old predictor
(they hold it). The first request for a name loads synchronously: there is nothing to serve meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable

import torch
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import VisiontuneError
from app.ml.predictor import ModelCache
from app.services.prediction import ServedVersion, load_predictor, resolve_served
from app.serving.predictor import Predictor

log = logging.getLogger("visiontune.serving")

Loader = Callable[[ServedVersion], Predictor]


class ServingTargets:
    """Per (project, requested name) the target that answers, switched only once its successor is warm."""

    def __init__(self, cache: ModelCache) -> None:
        self.cache = cache
        self._current: dict[Hashable, ServedVersion] = {}
        self._warming: set[str] = set()
        self._lock = threading.Lock()

    def predictor_for(self, key: Hashable, resolved: ServedVersion, load: Loader) -> tuple[ServedVersion, Predictor]:
        """The target to answer with and its predictor: resolved when it is loaded, else the warm previous one."""
        ready = self.cache.peek(resolved.cache_key)
        with self._lock:
            previous = self._current.get(key)
        if ready is not None or previous is None or previous.cache_key == resolved.cache_key:
            predictor = ready if ready is not None else load(resolved)
            with self._lock:
                self._current[key] = resolved
            return resolved, predictor
        old = self.cache.peek(previous.cache_key)
        if old is None:  # the previous one was evicted: nothing warm to answer with meanwhile
            predictor = load(resolved)
            with self._lock:
                self._current[key] = resolved
            return resolved, predictor
        self._warm_in_background(key, resolved, load)
        return previous, old

    def warm(self, session: Session, settings: Settings, project: str, ref: str) -> None:
        """Load and warm what ref (a name, or name@alias) resolves to in session, before its change commits, so
        that this process switches at once (others warm it in the background on their next request)."""
        device = settings.resolved_predict_device()
        try:
            served = resolve_served(session, project, ref, None, settings.predict_backend, device)
        except VisiontuneError:
            return  # nothing serves under that name any more
        threads = settings.predict_threads or settings.torch_threads
        try:
            predictor = load_predictor(self.cache, served, device, threads)
            predictor.predict_batch(torch.zeros(1, 3, predictor.image_size, predictor.image_size, dtype=torch.uint8))
        except Exception:  # the change stands; the next request loads it (and says why if it cannot)
            log.exception("could not warm %s v%s", served.model_name, served.version)

    def _warm_in_background(self, key: Hashable, resolved: ServedVersion, load: Loader) -> None:
        with self._lock:
            if resolved.cache_key in self._warming:
                return
            self._warming.add(resolved.cache_key)

        def warm() -> None:
            try:
                predictor = load(resolved)
                size = predictor.image_size
                predictor.predict_batch(torch.zeros(1, 3, size, size, dtype=torch.uint8))  # warm-up
                with self._lock:
                    self._current[key] = resolved
                log.info("now serving %s v%s (%s)", resolved.model_name, resolved.version, resolved.backend)
            except Exception:  # the old target keeps serving; the next request tries again
                log.exception("could not load %s v%s", resolved.model_name, resolved.version)
            finally:
                with self._lock:
                    self._warming.discard(resolved.cache_key)

        threading.Thread(target=warm, name=f"warm-{resolved.cache_key}", daemon=True).start()
