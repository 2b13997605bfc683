"""What each model name serves in this API process, and switches that drop nothing.

When what a name resolves to changes (a better job, a promotion, an alias move, a rollback, another backend),
the new target is loaded and warmed up (one forward) in the background while requests keep being answered by
the one that served before; once warm, it takes the traffic. Requests in flight finish on the old predictor
(they hold it). The first request for a name loads synchronously: there is nothing to serve meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

import torch
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import session_scope
from app.errors import VisiontuneError
from app.ml.predictor import ModelCache
from app.serving.host import ModelHost
from app.serving.predictor import Predictor
from app.serving.served import ServedVersion, load_predictor

log = logging.getLogger("visiontune.serving")

Loader = Callable[[ServedVersion], Predictor]
# (session, project, name or name@alias, version, backend, device) -> what serves: the registry's lookup
# (app.services.prediction.resolve_served), handed in so that serving never imports the use-cases.
Resolver = Callable[[Session, str, str | None, int | None, str, str], ServedVersion]
MAX_LOOKUPS = 4096


class ServingTargets:
    """Per (project, requested name) the target that answers, switched only once its successor is warm."""

    def __init__(
        self,
        cache: ModelCache,
        resolve_served: Resolver,
        host: ModelHost | None = None,
        lookup_ttl_s: float = 1.0,
        precision: str = "auto",
        compile: bool = False,
    ) -> None:
        self.cache = cache
        self.resolve_served = resolve_served
        self.precision = precision  # the torch backend's (VISIONTUNE_PREDICT_PRECISION)
        self.compile = compile  # VISIONTUNE_PREDICT_COMPILE
        self.host = host  # the inference process models load into; None: this process
        self.lookup_ttl_s = lookup_ttl_s
        self._lookups: dict[Hashable, tuple[float, ServedVersion]] = {}
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

    def resolve(
        self,
        factory: sessionmaker[Session],
        project: str,
        name: str | None,
        version: int | None,
        backend: str,
        device: str,
    ) -> ServedVersion:
        """What (name, version) serves for project, looked up in its own short transaction and kept for
        lookup_ttl_s: /predict reads the database at most once a second per target, and a change made elsewhere
        (a better job, another API process's promotion) is seen within that. Changes made through this process
        call forget() once committed, so they are seen at once. Failures (404, 409) are never kept."""
        key = (project, name, version, backend, device)
        now = time.monotonic()
        hit = self._lookups.get(key)
        if hit is not None and now - hit[0] < self.lookup_ttl_s:
            return hit[1]
        with session_scope(factory) as session:
            served = self.resolve_served(session, project, name, version, backend, device)
        if len(self._lookups) >= MAX_LOOKUPS:  # names sent by callers: never an unbounded dict
            self._lookups.clear()
        self._lookups[key] = (now, served)
        return served

    def forget(self) -> None:
        """Drop every kept lookup (after a change of what serves has committed)."""
        self._lookups.clear()

    def load(self, served: ServedVersion, device: str, threads: int | None) -> Predictor:
        """The served version's predictor, from the cache or loaded (into the model host, when there is one)."""
        return load_predictor(self.cache, served, device, threads, self.host, self.precision, self.compile)

    def warm(self, session: Session, settings: Settings, project: str, ref: str) -> None:
        """Load and warm what ref (a name, or name@alias) resolves to in session, before its change commits, so
        that this process switches at once (others warm it in the background on their next request)."""
        device = settings.resolved_predict_device()
        try:
            served = self.resolve_served(session, project, ref, None, settings.predict_backend, device)
        except VisiontuneError:
            return  # nothing serves under that name any more
        threads = settings.predict_threads or settings.torch_threads
        try:
            predictor = self.load(served, device, threads)
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
