"""An in-process Kubernetes API for tests and ``tessera bench operator``: kmock's emulator with Tessera's resources.

``EmulatedCluster`` serves kmock's ``KubernetesEmulator`` on loopback HTTP in a background thread, registers
the resources the operator touches (the four Tessera CRDs, KubeRay's RayService, Nodes, Events, kopf's
peering objects) and writes a kubeconfig, so that the real operator, ``kubectl`` and the ``kubernetes``
client all talk to it as to a cluster (``operator_run.OperatorRun`` runs the real operator against it).

kmock's own pytest fixture serves the emulator in the test's event loop, which a synchronous test blocks
while it waits for the operator; so the emulator here runs in a thread of its own.

The emulator stores objects as plain JSON and merges patches; ``ClusterEmulator`` adds the few API-server
behaviours the operator relies on: generateName, uid, creationTimestamp, resourceVersion, ``metadata.generation`` bumped
on spec changes, the status subresource, list kinds, and garbage collection of objects whose owner is
deleted (what kube-controller-manager does through ownerReferences).
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import aiohttp.web_runner
import aiohttp.web_server
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import dicts as kmock_dicts  # merge/JSON patches exactly as the emulator applies them
from typing_extensions import override

from tessera.api.crdgen import RESOURCES as CRD_RESOURCES
from tessera.api.crdgen import build_crds

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

# (group/version/plural, kind, namespaced, singular, short names, has a status subresource)
BUILTIN_RESOURCES: tuple[tuple[str, str, bool, str, tuple[str, ...], bool], ...] = (
    ("v1/namespaces", "Namespace", False, "namespace", ("ns",), True),
    ("v1/nodes", "Node", False, "node", ("no",), True),
    ("v1/events", "Event", True, "event", ("ev",), False),
    ("v1/pods", "Pod", True, "pod", ("po",), True),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False,
     "customresourcedefinition", ("crd", "crds"), True),
    ("kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", False, "clusterkopfpeering", (), True),
    ("kopf.dev/v1/kopfpeerings", "KopfPeering", True, "kopfpeering", (), True),
    ("ray.io/v1/rayservices", "RayService", True, "rayservice", ("rayservice",), True),
    ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", True, "networkpolicy", ("netpol",), False),
)
VERBS = ("create", "delete", "get", "list", "patch", "watch")


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the API-server behaviours listed in the module docstring."""

    _revision: int = attrs.field(default=0, init=False)
    _with_status: set[Any] = attrs.field(factory=set, init=False)
    # Writes are applied one at a time: a patch is computed against the stored object, then stored.
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    # (method, path fragment) -> event: matching requests wait until it is set (tests stall the API this way)
    holds: dict[tuple[str, str], asyncio.Event] = attrs.field(factory=dict, init=False)
    # held requests released with drop=True: they never reach the store (the client died before sending them)
    dropped: set[tuple[str, str]] = attrs.field(factory=set, init=False)
    # (method, path) of every request. kmock keeps the requests themselves too, and matches each new one
    # against all of them (quadratic: 0.2 s per request after a few hundred), so it keeps only the current one.
    seen: list[tuple[str, str]] = attrs.field(factory=list, init=False)

    def register(self, path: str, *, kind: str, namespaced: bool, singular: str,
                 shortnames: Iterable[str] = (), status: bool = True) -> None:
        """Serve a resource in discovery (kubectl needs singular and short names to resolve it)."""
        self.resources[path] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, singular=singular, shortnames=set(shortnames),
            verbs=set(VERBS), subresources={"status"} if status else set(),
        )
        if status:
            self._with_status.add(kmock.resource(path))

    def _next_version(self) -> str:
        self._revision += 1
        return str(self._revision)

    @override
    async def _handle(self, request: kmock.Request) -> Any:
        del self._requests[:-1]
        self.seen.append((request.method, str(request.url.path)))
        for (method, fragment), released in list(self.holds.items()):
            if request.method == method and fragment in str(request.url.path):
                await released.wait()
                if (method, fragment) in self.dropped:
                    raise aiohttp.web.HTTPServiceUnavailable(text="dropped by the test")
        if request.resource is None or request.action is None:
            return await super()._handle(request)
        if request.action in (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
            async with self._write_lock:
                return await self._handle_write(request)
        return await super()._handle(request)

    async def _handle_write(self, request: kmock.Request) -> Any:
        action = request.action
        if action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):  # kopf names its Events this way
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                object.__setattr__(request, "name", meta["name"])
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta["generation"] = 1
            meta["resourceVersion"] = self._next_version()
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
        elif action == kmock.action.UPDATE and request.name is not None and request.data is not None:
            conflict = self._prepare_update(request)
            if conflict is not None:
                return conflict
        deleted_uid = self._uid_of(request) if action == kmock.action.DELETE else None
        response = await super()._handle(request)
        if deleted_uid and self._is_gone(request):
            await self._collect_dependents(deleted_uid)
        return response

    def _stored(self, request: kmock.Request) -> Any:
        obj = self.objects._objects.get((request.resource, request.namespace, request.name))
        return obj if obj is not None and not obj.deleted else None

    def _uid_of(self, request: kmock.Request) -> str | None:
        obj = self._stored(request)
        return obj.raw.get("metadata", {}).get("uid") if obj is not None else None

    def _is_gone(self, request: kmock.Request) -> bool:
        return self._stored(request) is None

    def _prepare_update(self, request: kmock.Request) -> aiohttp.web.Response | None:
        """Rewrite a patch the way the API server applies it: subresource split, generation, resourceVersion."""
        obj = self._stored(request)
        if obj is None:
            return None  # the emulator answers 404
        old = obj.raw
        try:
            new = copy.deepcopy(dict(kmock_dicts.patch_dict(old, request.data)))
        except jsonpatch.JsonPatchTestFailed as err:  # a stale resourceVersion: the API server answers 422
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                              "reason": "Invalid", "code": 422, "message": str(err)}, status=422)
        if request.resource in self._with_status:
            if request.subresource == "status":  # only the status changes through /status
                new = {**old, "status": new.get("status")}
            else:  # and never through the main resource
                new = {**new, "status": old.get("status")}
            new = {k: v for k, v in new.items() if v is not None}
        meta = new.setdefault("metadata", {})
        meta["generation"] = old.get("metadata", {}).get("generation", 1) + (new.get("spec") != old.get("spec"))
        meta["resourceVersion"] = self._next_version()
        # A merge patch with every key: the emulator then stores exactly `new`.
        request.data.clear() if isinstance(request.data, dict) else None
        patch = _replacement_patch(old, new)
        if isinstance(request.data, dict):
            request.data.update(patch)
        else:  # a JSON patch (a list): replace its operations by the equivalent merge
            object.__setattr__(request, "data", patch)

    async def _collect_dependents(self, owner_uid: str) -> None:
        """Delete what the deleted object owned (foreground order is not modelled: all at once)."""
        async with self._lock:
            doomed = [
                (key, obj) for key, obj in self.objects.items()
                if not obj.deleted and any(
                    ref.get("uid") == owner_uid for ref in obj.raw.get("metadata", {}).get("ownerReferences", [])
                )
            ]
            for (resource, _, _), obj in doomed:
                raw = obj.raw
                obj.delete()
                await self._buses[resource].put({"type": "DELETED", "object": raw})
        for _, obj in doomed:
            uid = obj.last.raw.get("metadata", {}).get("uid")
            if uid:
                await self._collect_dependents(uid)

    # kmock compares every stored object with every request through a runtime-checked Protocol (~0.7 ms per
    # object per request with a few hundred Nodes); these two replace its private lookups with a dict lookup
    # and plain tuple comparisons, same semantics.
    def _KubernetesEmulator__get_objs(self, request: kmock.Request, strict: bool) -> list[Any]:
        store = self.objects._objects
        if request.name is not None and (strict or request.namespace is not None):
            obj = store.get((request.resource, request.namespace, request.name))
            return [obj] if obj is not None else []
        return [obj for (resource, namespace, name), obj in store.items()
                if self._KubernetesEmulator__check(request, resource, namespace, name, strict)]

    def _KubernetesEmulator__check(self, request: kmock.Request, resource: Any, namespace: str | None, name: str,
                                   strict: bool) -> bool:
        wanted = request.resource
        if (resource.group, resource.version, resource.plural) != (wanted.group, wanted.version, wanted.plural):
            return False
        if strict and namespace != request.namespace:
            return False
        if not strict and request.namespace is not None and namespace != request.namespace:
            return False
        return request.name is None or name == request.name

    @override
    async def _serve_version(self, request: kmock.Request) -> Any:
        listing = await super()._serve_version(request)
        if request.resource.group == "":  # the core group is "v1", not "/v1"
            listing["groupVersion"] = request.resource.version
        for entry in listing["resources"]:
            if "/" in entry["name"]:  # subresources have no names of their own: kubectl warns otherwise
                entry.update(singularName="", shortNames=[], verbs=["get", "patch"])
        return listing

    @override
    async def _serve_list(self, request: kmock.Request) -> Any:
        listing = await super()._serve_list(request)
        info = self.resources[request.resource] if request.resource in self.resources else None
        if info is not None and info.kind:  # kubectl needs the kind of a list to print it
            group, version = request.resource.group, request.resource.version
            listing["apiVersion"] = f"{group}/{version}" if group else version
            listing["kind"] = f"{info.kind}List"
            listing["metadata"]["resourceVersion"] = str(self._revision)
        return listing


class _QuickClosingServer(aiohttp.test_utils.RawTestServer):
    """Closes at once: a killed operator's watch connections must not hold the shutdown for a minute."""

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> Any:
        server = aiohttp.web_server.Server(self._handler, loop=self._loop, debug=debug, **kwargs)
        return aiohttp.web_runner.ServerRunner(server, debug=debug, shutdown_timeout=0.5, **kwargs)


def _replacement_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns ``old`` into ``new`` (None deletes a key)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            patch[key] = _replacement_patch(before, value)
        elif value != before or key not in old:
            patch[key] = value
    return patch


def register_tessera_resources(emulator: ClusterEmulator) -> list[dict[str, Any]]:
    """Register the built-in resources, kopf's peering, RayService and the Tessera CRDs; return the CRDs."""
    for path, kind, namespaced, singular, shortnames, status in BUILTIN_RESOURCES:
        emulator.register(path, kind=kind, namespaced=namespaced, singular=singular, shortnames=shortnames,
                          status=status)
    crds = list(build_crds().values())
    for crd in crds:
        spec = crd["spec"]
        names = spec["names"]
        has_status = "status" in spec["versions"][0].get("subresources", {})
        emulator.register(
            f"{spec['group']}/{spec['versions'][0]['name']}/{names['plural']}", kind=names["kind"],
            namespaced=spec["scope"] == "Namespaced", singular=names["singular"], shortnames=names["shortNames"],
            status=has_status,
        )
    return crds


class ClusterClient:
    """A small synchronous client of the emulated API (plain HTTP, independent of the operator's code)."""

    def __init__(self, url: str = "", kubeconfig: Path | None = None):
        self.url = url
        self.kubeconfig = kubeconfig

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/merge-patch+json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise RuntimeError(f"{method} {path}: HTTP {err.code}: {err.read()[:500]!r}") from None

    def create(self, obj: dict[str, Any]) -> Any:
        return self.request("POST", collection_path(obj), obj, content_type="application/json")

    def apply(self, obj: dict[str, Any]) -> Any:
        """Create, or merge the given fields into the existing object (like ``kubectl apply`` for new fields)."""
        if self.get_like(obj) is None:
            return self.create(obj)
        return self.request("PATCH", object_path(obj), obj)

    def apply_files(self, *paths: Path) -> list[dict[str, Any]]:
        docs = []
        for path in paths:
            files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
            for file in files:
                docs += [d for d in yaml.safe_load_all(file.read_text()) if d]
        for doc in docs:
            self.apply(doc)
        return docs

    def get(self, api_version: str, kind_plural: str, name: str, namespace: str | None = None) -> Any:
        return self.request("GET", _path(api_version, kind_plural, namespace, name))

    def get_like(self, obj: dict[str, Any]) -> Any:
        return self.request("GET", object_path(obj))

    def list(self, api_version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        listing = self.request("GET", _path(api_version, plural, namespace, None))
        return listing["items"] if listing else []

    def patch(self, api_version: str, plural: str, name: str, patch: dict[str, Any],
              namespace: str | None = None, subresource: str = "") -> Any:
        path = _path(api_version, plural, namespace, name) + (f"/{subresource}" if subresource else "")
        return self.request("PATCH", path, patch)

    def delete(self, api_version: str, plural: str, name: str, namespace: str | None = None) -> Any:
        return self.request("DELETE", _path(api_version, plural, namespace, name))

    def delete_like(self, obj: dict[str, Any]) -> Any:
        return self.request("DELETE", object_path(obj))


class EmulatedCluster(ClusterClient):
    """The emulator served on 127.0.0.1 in a background thread, with a kubeconfig and a small sync client.

    Use as a context manager::

        with EmulatedCluster(nodes=EmulatedCluster.example_nodes()) as cluster:
            cluster.apply_files(EXAMPLES / "inventory")
            cluster.kubeconfig  # a file for kubectl, the kubernetes client or the operator
    """

    def __init__(self, *, nodes: Iterable[dict[str, Any]] = (), namespaces: Iterable[str] = ("default",),
                 workdir: Path | None = None):
        self._namespaces = list(namespaces)
        self._initial = [copy.deepcopy(n) for n in nodes]
        self._workdir = workdir
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self.emulator: ClusterEmulator | None = None
        super().__init__()

    @staticmethod
    def example_nodes() -> list[dict[str, Any]]:
        return [doc for doc in yaml.safe_load_all((EXAMPLES / "inventory" / "nodes.yaml").read_text()) if doc]

    # --- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "EmulatedCluster":
        self._thread = threading.Thread(target=self._serve, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._started.wait(30) or self._failure:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._failure!r}")
        for obj in self._initial:
            self.create(obj)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(30)

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # surfaced to __enter__
            self._failure = err
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with ClusterEmulator() as emulator, kmock.Server(emulator, server_cls=_QuickClosingServer) as server:
            self.emulator = emulator
            self.crds = register_tessera_resources(emulator)
            for crd in self.crds:  # kopf and kubectl see the CRDs as objects, too
                emulator.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None,
                                 crd["metadata"]["name"]] = copy.deepcopy(crd)
            for ns in self._namespaces:  # stored directly: kmock cannot parse the path /api/v1/namespaces
                emulator.objects["v1/namespaces", None, ns] = _namespace(ns)
            self.url = str(server.url).rstrip("/")
            self.kubeconfig = self._write_kubeconfig()
            self._started.set()
            await self._stopping.wait()

    def _write_kubeconfig(self) -> Path:
        import tempfile

        folder = self._workdir or Path(tempfile.mkdtemp(prefix="tessera-emulator-"))
        path = folder / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                           "namespace": "default"}}],
        }))
        return path

    def hold(self, method: str, path_fragment: str) -> Callable[..., None]:
        """Stall requests (``method`` and a path containing ``path_fragment``) until the returned function is called;
        ``release(drop=True)`` fails them instead, as if their sender had died before they arrived."""
        assert self._loop is not None and self.emulator is not None
        emulator, loop = self.emulator, self._loop
        released = asyncio.Event()
        key = (method.upper(), path_fragment)
        loop.call_soon_threadsafe(emulator.holds.__setitem__, key, released)

        def release(drop: bool = False) -> None:
            if drop:
                loop.call_soon_threadsafe(emulator.dropped.add, key)
            loop.call_soon_threadsafe(released.set)
            loop.call_soon_threadsafe(emulator.holds.pop, key, None)

        return release

    def requests_matching(self, method: str, path_fragment: str) -> int:
        """How many requests the emulator received so far with this method and a path containing the fragment."""
        assert self.emulator is not None
        return sum(1 for m, path in list(self.emulator.seen) if m == method.upper() and path_fragment in path)

# kind -> plural, and the namespaced kinds, of every resource the emulator serves
PLURALS = {kind: path.rsplit("/", 1)[1] for path, kind, *_ in BUILTIN_RESOURCES}
PLURALS.update({info.kind: info.plural for info in CRD_RESOURCES})
NAMESPACED_KINDS = {kind for _, kind, namespaced, *_ in BUILTIN_RESOURCES if namespaced}
NAMESPACED_KINDS.update(info.kind for info in CRD_RESOURCES if info.scope == "Namespaced")


def _path(api_version: str, plural: str, namespace: str | None, name: str | None) -> str:
    root = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = f"/namespaces/{namespace}" if namespace else ""
    return f"{root}{ns}/{plural}" + (f"/{name}" if name else "")


def collection_path(obj: dict[str, Any]) -> str:
    ns = obj.get("metadata", {}).get("namespace") or ("default" if obj["kind"] in NAMESPACED_KINDS else None)
    return _path(obj["apiVersion"], PLURALS[obj["kind"]], ns, None)


def object_path(obj: dict[str, Any]) -> str:
    return collection_path(obj) + "/" + obj["metadata"]["name"]


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def wait_for(condition: Callable[[], Any], timeout: float = 30, interval: float = 0.05, what: str = "") -> Any:
    """Poll until ``condition()`` is truthy and return it; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(interval)


def scaled_nodes(copies: int) -> list[dict[str, Any]]:
    """The example Nodes, ``copies`` times each (a larger fleet for the benchmark)."""
    out = []
    for node in EmulatedCluster.example_nodes():
        for i in range(copies):
            clone = copy.deepcopy(node)
            clone["metadata"]["name"] = f"{node['metadata']['name']}-{i}"
            clone["metadata"]["labels"]["kubernetes.io/hostname"] = clone["metadata"]["name"]
            out.append(clone)
    return out


def main(argv: list[str] | None = None) -> None:
    """Serve an emulated cluster until stdin closes; print {"url", "kubeconfig"} as one JSON line first.

    ``python -m tessera_devtools.cluster --node-copies 20`` (the benchmark runs it in its own process,
    so that the operator's memory and CPU are measured apart from the API server's).
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--node-copies", type=int, default=1, help="copies of each example Node")
    args = parser.parse_args(argv)
    with EmulatedCluster(nodes=scaled_nodes(args.node_copies)) as cluster:
        print(json.dumps({"url": cluster.url, "kubeconfig": str(cluster.kubeconfig)}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
