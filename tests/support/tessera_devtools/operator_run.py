"""The real operator (``kopf.operator`` with Tessera's handlers) in a background thread of the test process.

kopf's ``kopf.testing.KopfRunner`` runs ``kopf run`` through its CLI, which takes no memo: the per-run
settings (kubeconfig, policies) and the per-run state the tests read (``memo["tessera"]``) could then only
travel through process-wide environment variables, and two operators in one test (peering, restarts)
would share them. It cannot kill an operator dead either. So this runner calls ``kopf.operator`` itself,
with kopf's own stop and ready flags.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

from tessera_devtools.cluster import ClusterClient


class OperatorRun:
    """The real operator (``kopf.operator`` with Tessera's handlers) in a background thread.

    ``stop()`` shuts it down as SIGTERM would; ``kill()`` stops its event loop dead, as SIGKILL would:
    no cleanup runs and whatever it was doing is abandoned.
    """

    def __init__(self, cluster: ClusterClient, *, namespaces: Iterable[str] = (), standalone: bool = True,
                 priority: int | None = None, **settings: Any):
        from tessera.operator.settings import OperatorSettings

        self.settings = OperatorSettings(kubeconfig=str(cluster.kubeconfig), metrics_port=0,
                                         namespaces=list(namespaces), standalone=standalone,
                                         **({"peering_priority": priority} if priority is not None else {}),
                                         **settings)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.memo: Any = None
        self.failure: BaseException | None = None

    def __enter__(self) -> "OperatorRun":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "OperatorRun":
        import kopf

        import tessera.operator.main  # noqa: F401  (registers the handlers)

        self.memo = kopf.Memo(settings=self.settings)
        self._thread = threading.Thread(target=self._run, name="tessera-operator", daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError(f"the operator did not start: {self.failure!r}")
        return self

    def _run(self) -> None:
        import kopf

        loop = asyncio.new_event_loop()
        self._loop = loop
        ops = self.settings
        try:
            loop.run_until_complete(kopf.operator(
                clusterwide=not ops.namespaces, namespaces=ops.namespaces, standalone=ops.standalone,
                priority=ops.peering_priority, peering_name=ops.peering_name,
                memo=self.memo, stop_flag=self._stop, ready_flag=self._ready,
            ))
        except BaseException as err:  # kill() ends here ("Event loop stopped before Future completed")
            self.failure = err
            self._ready.set()

    @property
    def state(self) -> Any:
        """The operator's per-run state (``handlers.OperatorState``)."""
        return self.memo.get("tessera")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def kill(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(30)
        # kopf waits for a threading.Event stop flag in an executor thread; the dead loop never ends that
        # wait, and the interpreter would hang at exit joining the thread. Setting the flag releases it.
        self._stop.set()
