"""``onnxq compare --executor ray``: every variant of every profile as Ray work; latency still timed interleaved.

>>> from onnxq.compare import compare
>>> doc = compare("model.onnx", calib="calib.npz", eval_data="eval.npz", outdir="out",
...               profiles=["cpu-x86-vnni", "cuda"], executor="ray", ray_address="10.0.0.5:6379")  # doctest: +SKIP
>>> doc["profiles"][1]["variants"][0]["ran_on"]["latency"]["hostname"]                           # doctest: +SKIP
'gpu-box'

The only module that imports ray (``--executor serial``, the default, never does). It runs the same
functions as the serial path (``onnxq.compare._build``, ``_evaluate``, ``_time``); it only decides
where they run and moves their inputs and outputs.

Placement: Ray custom resources. A node advertises what it can run, ``onnxq:profile:<name>`` (one per
profile), and its timing lock ``onnxq:timing`` of exactly 1::

    ray start --address HEAD:6379 --resources '{"onnxq:profile:cuda": 1, "onnxq:timing": 1}'

Without ``--ray-address`` onnxq starts a local instance (``ray.init(address="local")``) advertising
the profiles runnable on this host (their providers present, or every requested one with
``--allow-fallback``) and the lock, and shuts it down when done.

Work per profile:

- one build-and-evaluate task per variant (``qat`` and ``qat-control`` share one: the QAT task runs once
  per profile), asking ``{"onnxq:profile:P": 0.01, "onnxq:timing": 0.01}`` and one CPU, so they fan out
  over every node that can run P. FP32's task also returns FP32's outputs: the reference every other
  variant of the profile is scored against, fetched after it is built (so building does not wait);
- ONE timing task per profile, after its variants, asking ``{"onnxq:profile:P": 0.01, "onnxq:timing": 1}``.
  It holds the node's whole lock (and a file lock in the host's temp folder, for several Ray nodes on one
  machine): on that node no other timing and no build runs while it times FP32
  and all variants of P in one process, rounds rotated (:func:`onnxq.bench.measure_interleaved`, through
  ``compare._time``), so speed-ups are measured exactly as with ``--executor serial``. Latency is never
  split across variants or nodes: a speed-up compares two numbers from the same node and run.

Data: bytes as Ray objects; no shared filesystem is assumed. The driver puts the FP32 model (with its
external-data files) and the calibration file or folder into the object store once; each task writes
them into its own scratch folder under the node's system temp (removed when the task ends), builds
into a scratch OUTDIR and returns the files it wrote as bytes. The driver writes them into OUTDIR
(atomically, manifests last) with every path in records and manifests mapped back to the driver's,
so OUTDIR, report.json and report.md look as the serial run leaves them. Timing tasks get the
variants' bytes the same way (node to node). Models therefore cost memory in the object store
(roughly each model's size, times the variants); fine for models up to a few hundred MB.

Results: the report is the serial one (same variants, statuses, accuracies; verdicts by the same rules);
each variant row adds ``ran_on`` (``build``: the node that built and scored it; ``latency``: the node
that timed it; each ``node_id``, ``ip``, ``hostname``) and ``latency_host`` (:func:`onnxq.bench.host_info`
and the int8 ceiling of the node that timed it); ``executor`` at the top lists the nodes; a profile
note says which node ran what. The top-level ``host`` stays the driver's.

Failures: tasks run with ``max_retries=0``. A task that dies (worker crash, OOM kill, node lost) is its
variants' failure (stage ``ray``, the Ray error in one line); the others finish. A timing task that dies
leaves the profile's latency "not measured" with the reason; accuracy and size still decide.

Checks before any work, each one line and exit 2: ray not installed; ``--ray-address`` not HOST:PORT,
nothing listening there, or something that is not Ray's GCS (``ray.init`` would hang for minutes);
a requested profile that no live node advertises together with ``onnxq:timing`` and a CPU (its tasks
would wait forever).

QAT (``--task``): the task must be importable on the nodes (an installed module, or a file path that
exists there); when no MODEL is given, the first profile's QAT runs on the driver to get the FP32 model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, ProviderError, first_line

__all__ = ["RayExecutor", "TIMING_RESOURCE", "profile_resource", "require_ray", "parse_address", "probe_address"]

TIMING_RESOURCE = "onnxq:timing"
SHARE = 0.01  # what a build/evaluate task takes of its node's profile resource and timing lock (a timing task takes the lock whole)
PROBE_S = 3.0  # seconds a cluster address gets to answer (TCP, then gRPC)
_QAT_KINDS = ("qat", "fp32-control")


def profile_resource(name: str) -> str:
    """The Ray custom resource a node advertises to run profile ``name``."""
    return f"onnxq:profile:{name}"


def require_ray():
    """The ray module, or one line saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise InputError(f"--executor ray needs Ray, which is not importable here ({first_line(e)}): pip install 'onnxq[ray]', "
                         "or use --executor serial") from e
    return ray


def parse_address(text: str) -> tuple[str, int]:
    t = str(text).strip()
    if t.startswith("ray://"):
        raise InputError(f"--ray-address {t!r}: give the head's GCS address HOST:PORT (what `ray start --head` prints, "
                         "port 6379 by default), not a ray:// client address; run onnxq on a node of the cluster")
    host, sep, port = t.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--ray-address {t!r} is not HOST:PORT; give the head's GCS address, e.g. 10.0.0.5:6379 "
                         "(what `ray start --head` prints)")
    return host.strip("[]"), int(port)


def probe_address(address: str, timeout: float = PROBE_S) -> None:
    """Refuse an address where no Ray GCS answers, quickly (``ray.init`` there hangs for many minutes)."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or first_line(e))
        raise InputError(f"no Ray cluster answers at {host}:{port} ({why} after {timeout:g} s at most); start the head there "
                         f"with `ray start --head --port {port}`, or check --ray-address") from e
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return  # a TLS cluster: the plain gRPC probe below cannot tell
    try:
        import grpc  # Ray's own dependency
    except ImportError:
        return
    channel = grpc.insecure_channel(str(address).strip())
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise InputError(f"{host}:{port} answers, but not as a Ray cluster (no gRPC reply within {timeout:g} s); give the "
                         "head's GCS address (`ray start --head` prints it; port 6379 by default)") from None
    finally:
        channel.close()


# ---------------------------------------------------------------------------------------------
# Files as bytes, and paths mapped between a node's scratch folder and the driver


@dataclass
class _Files:
    """Files as bytes by path relative to where they are placed; ``main`` names the model (or folder) among them."""

    main: str
    files: dict[str, bytes]

    @classmethod
    def of_model(cls, path: str | os.PathLike) -> "_Files":
        """A model, its external-data files and its manifest."""
        from ._fs import external_files
        from .manifest import manifest_path

        path = Path(path)
        found = [p for p in (path, *external_files(path), manifest_path(path)) if p.is_file()]
        root = Path(os.path.commonpath([p.resolve().parent for p in found]))
        return cls(path.resolve().relative_to(root).as_posix(),
                   {p.resolve().relative_to(root).as_posix(): p.read_bytes() for p in found})

    @classmethod
    def of_path(cls, path: str | os.PathLike) -> "_Files":
        """A file, or a folder with everything in it (a calibration folder)."""
        p = Path(path)
        if p.is_dir():
            return cls(p.name, {q.relative_to(p.parent).as_posix(): q.read_bytes() for q in sorted(p.rglob("*")) if q.is_file()})
        return cls(p.name, {p.name: p.read_bytes()})

    def place(self, root: Path) -> Path:
        for rel, data in self.files.items():
            _inside(rel)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return root / self.main


def _inside(rel: str) -> str:
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise InputError(f"refusing a file name from a Ray task that leaves its folder: {rel!r}")
    return rel


def _prefix(path: str) -> str:
    """What a path inside ``path`` starts with: 'out/' for 'out', '' for '.'."""
    return str(Path(path) / "x")[:-1]


def _swap(obj: Any, pairs: list[tuple[str, str]]) -> Any:
    """Every string with a scratch path in it (key of ``pairs``) written with the driver's path instead."""
    if isinstance(obj, str):
        for local, driver in pairs:
            if local in obj:
                obj = obj.replace(local + os.sep, _prefix(driver)).replace(local, driver)
        return obj
    if isinstance(obj, dict):
        return {k: _swap(v, pairs) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_swap(v, pairs) for v in obj)
    return obj


@contextlib.contextmanager
def _scratch():
    d = Path(tempfile.mkdtemp(prefix="onnxq-ray-task-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _local_run(run: Any, tmp: Path, model_files: _Files, calib_files: _Files | None):
    """``run`` with its model, calibration data and OUTDIR in this node's scratch folder, and the path pairs back."""
    model = model_files.place(tmp / "model")
    calib = str(calib_files.place(tmp / "calib")) if calib_files is not None else run.calib
    local = dataclasses.replace(run, model=model, calib=calib, outdir=tmp / "out", progress=False, qat_done={})
    pairs = [(str(tmp / "out"), str(run.outdir)), (str(model), str(run.model)), (calib, str(run.calib))]
    return local, pairs


def _node() -> dict[str, str]:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname()}


def _missing(prof: Any) -> list[str]:
    from .runtime import available_providers, required_providers

    avail = available_providers()
    return [p for p in required_providers(prof) if p not in avail]


_HOST: dict[str, Any] = {}  # this worker process's node facts, measured once


def _host_facts() -> dict[str, Any]:
    if not _HOST:
        from .bench import host_ceiling, host_info

        _HOST.update(host_info(), ceiling=host_ceiling())
    return dict(_HOST)


# ---------------------------------------------------------------------------------------------
# The two kinds of task (run on the nodes)


def _variant_task(run: Any, prof: Any, items: list, model_files: _Files, calib_files: _Files, ref_box: list | None):
    """Build (or take, when built on the driver) a group of variants of one profile and score them.

    Returns (report, files written under OUTDIR as :class:`_Files`, FP32's outputs when FP32 is in the group)."""
    import ray

    from .compare import _build, _evaluate

    with _scratch() as tmp:
        local, pairs = _local_run(run, tmp, model_files, calib_files)
        recs = []
        for k, (v, pre, box) in enumerate(items):
            if pre is None:
                recs.append(_build(v, prof, local))
            else:
                rec = dataclasses.replace(pre)  # FP32 (the model this task has), or built on the driver (its files in box)
                rec.path = str(ray.get(box[0]).place(tmp / f"pre{k}")) if box is not None else str(local.model)
                recs.append(rec)
        ref = None
        if ref_box:
            try:
                ref = ray.get(ref_box[0])
            except ray.exceptions.RayError:  # FP32's task died: scored as the serial path does when FP32 failed
                ref = None
        fp32_out = _evaluate(recs, prof, local, ref_out=ref)
        out, mains, done = tmp / "out", [], []
        for (v, pre, box), rec in zip(items, recs):
            main = None
            if pre is not None:
                rec.path = pre.path
            else:
                if rec.ok and rec.path and not Path(rec.path).resolve().is_relative_to(out.resolve()):
                    rec.fail("build", f"the variant's model {rec.path} was written outside OUTDIR on node "
                                      f"{socket.gethostname()}; --executor ray brings back only files under OUTDIR/<profile>/")
                elif rec.ok and rec.path:
                    main = Path(rec.path).resolve().relative_to(out.resolve()).as_posix()
                rec = type(rec).from_dict(_swap(rec.to_dict(), pairs))
            done.append(rec)
            mains.append(main)
        files = {}
        for p in sorted(out.rglob("*")) if out.is_dir() else []:
            if p.is_file():
                data = p.read_bytes()
                if p.name.endswith(".onnxq.json"):  # manifests name their model and input: the driver's paths
                    from .manifest import dumps

                    data = dumps(_swap(json.loads(data), pairs)).encode("utf-8")
                files[p.relative_to(out).as_posix()] = data
        has_fp32 = any(r.kind == "fp32" for r in recs)
        return {"recs": done, "mains": mains, "node": _node(), "missing": _missing(prof)}, _Files("", files), (fp32_out if has_fp32 else None)


def _timing_task(run: Any, prof: Any, recs: list, shipped: dict, model_files: _Files) -> dict[str, Any]:
    """On a node holding its whole timing lock: FP32 and every variant of one profile timed together (compare._time)."""
    import ray

    from .compare import _time

    out: dict[str, Any] = {"node": _node(), "missing": _missing(prof), "timed": None}
    if out["missing"] and not run.allow_fallback:
        return out  # the driver says "not measured: provider missing", as the serial path does
    with _host_timing_lock(), _scratch() as tmp:
        out["host"] = _host_facts()
        local, _ = _local_run(run, tmp, model_files, None)
        placed: dict[Any, Path] = {}
        for i, rec in enumerate(recs):
            if i not in shipped:
                continue  # failed: compare._time skips it
            box, main = shipped[i]
            if box is None:
                rec.path = str(local.model)
                continue
            if box[0] not in placed:
                placed[box[0]] = tmp / f"v{len(placed)}"
                ray.get(box[0]).place(placed[box[0]])
            rec.path = str(placed[box[0]] / main)
        _time(recs, prof, local)
    out["timed"] = [{"latency": r.latency, "speedup": r.speedup, "latency_note": r.latency_note,
                     "latency_providers": r.latency_providers} for r in recs]
    return out


@contextlib.contextmanager
def _host_timing_lock():
    """Also one timing per host: several Ray nodes on one machine (ray.cluster_utils.Cluster, two raylets) share its cores."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the node's onnxq:timing resource alone
        yield
        return
    with open(Path(tempfile.gettempdir()) / "onnxq-timing.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _died(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if cause is not None and not isinstance(cause, type(e)):
        return f"{type(cause).__name__}: {first_line(cause)}"
    return f"{type(e).__name__}: {first_line(e)}"


def _where(node: dict[str, str] | None) -> str:
    if not node:
        return "an unknown node"
    return f"{node['hostname']} ({node['ip']}, node {node['node_id'][:8]})"


# ---------------------------------------------------------------------------------------------
# The driver


class _ProfileRun:
    """One profile on the driver: which variants go to which task, what came back."""

    def __init__(self, prof: Any, plan: list, run: Any, put):
        from .compare import _build, _cached

        self.prof, self.plan, self.run = prof, plan, run
        self.recs: list[Any] = [None] * len(plan)
        self.boxes: dict[int, tuple[list, str]] = {}  # a driver-built variant's files: ([ref], its model's name in them)
        self.built_on: dict[int, dict] = {}
        self.ship: dict[int, tuple[list | None, str | None]] = {}  # what the timing task gets per variant
        self.missing: list[str] = []
        self.timing: dict[str, Any] | None = None
        self.timing_error: str | None = None
        pre = []
        for i, v in enumerate(plan):
            rec = _cached(v, prof, run)
            if rec is None and (v.kind == "fp32" or (v.kind in _QAT_KINDS and prof.name in run.qat_done)):
                rec = _build(v, prof, run)  # FP32 is the input; a QAT task that ran here (no MODEL given) left its files here
            pre.append(rec)
        self.pre = pre
        self.fresh = not all(r is not None and r.cached for r in pre)
        if not self.fresh:  # everything cached: nothing to run (as the serial path)
            self.recs = pre
        for i, rec in enumerate(pre if self.fresh else []):  # built here: its bytes go to the nodes that score and time it
            if rec is not None and rec.ok and plan[i].kind != "fp32":
                files = _Files.of_model(rec.path)
                self.boxes[i] = ([put(files)], files.main)
        qat = [i for i, v in enumerate(plan) if v.kind in _QAT_KINDS]
        self.groups = [[i] for i, v in enumerate(plan) if v.kind not in _QAT_KINDS] + ([qat] if qat else [])
        self.left = len(self.groups) if self.fresh else 0

    def items(self, group: list[int]) -> list:
        return [(self.plan[i], self.pre[i], self.boxes[i][0] if i in self.boxes else None) for i in group]

    def took(self, group: list[int], reply: Any, files_ref: Any, ray: Any) -> None:
        """A variant task's reply (or its death)."""
        from .compare import _record

        self.left -= 1
        try:
            report, files = ray.get(reply), ray.get(files_ref)
        except ray.exceptions.RayError as e:
            for i in group:
                rec = dataclasses.replace(self.pre[i]) if self.pre[i] is not None else _record(self.plan[i], self.run)
                rec.fail("ray", f"the Ray task building and scoring it died ({_died(e)}); the other variants are unaffected")
                self.recs[i] = rec
            return
        _write(files, self.run.outdir)
        self.missing = self.missing or report["missing"]
        for i, rec, main in zip(group, report["recs"], report["mains"]):
            self.recs[i], self.built_on[i] = rec, report["node"]
            if rec.ok:  # what the timing task needs: the FP32 model it has anyway, or the bytes of this variant
                self.ship[i] = (None, None) if self.plan[i].kind == "fp32" else self.boxes.get(i) or ([files_ref], main)

    def timed(self, reply: Any, ray: Any) -> None:
        try:
            res = ray.get(reply)
        except ray.exceptions.RayError as e:
            self.timing_error = f"not measured: the Ray task timing this profile died ({_died(e)})"
            return
        self.timing, self.missing = res, res["missing"]
        for rec, t in zip(self.recs, res["timed"] or []):
            rec.latency, rec.speedup, rec.latency_note = t["latency"], t["speedup"], t["latency_note"]
            rec.latency_providers = t["latency_providers"]

    def finish(self, local: bool) -> dict[str, Any]:
        from .compare import _finish_profile, _profile_result

        nodes = [self.timing["node"]] if self.timing else list({n["node_id"]: n for n in self.built_on.values()}.values())
        where = "on this machine" if local else "on " + ", ".join(_where(n) for n in nodes)
        result = _profile_result(self.prof, self.missing, self.run, where)
        result.variants = self.recs
        if self.timing_error:
            result.latency_note = self.timing_error
        _finish_profile(result, self.plan, self.prof, self.run)
        if self.fresh:
            result.notes.append(self._note())
        doc = result.to_dict()
        timed_on = self.timing["node"] if self.timing and self.timing.get("timed") else None
        for i, row in enumerate(doc["variants"]):
            ran = {}
            if i in self.built_on:
                ran["build"] = self.built_on[i]
            if timed_on and row.get("latency"):
                ran["latency"] = timed_on
                row["latency_host"] = self.timing["host"]
            if ran:
                row["ran_on"] = ran
        return doc

    def _note(self) -> str:
        by: dict[str, list[str]] = {}
        for i, node in sorted(self.built_on.items()):  # in the plan's order
            by.setdefault(_where(node), []).append(self.plan[i].name)
        parts = [f"{', '.join(names)} built and scored on {w}" for w, names in by.items()]
        if self.timing and self.timing.get("timed"):
            parts.append(f"all {sum(1 for r in self.recs if r.latency)} timed together, interleaved, on {_where(self.timing['node'])}")
        return "Ray: " + "; ".join(parts or ["no task finished"])


def _write(files: _Files, outdir: Path) -> None:
    """A task's files into OUTDIR, each atomically: external data, then models, then manifests (a manifest follows its model)."""
    from .results import atomic_write

    def order(rel: str) -> int:
        return 2 if rel.endswith(".onnxq.json") else 1 if rel.endswith(".onnx") else 0

    for rel in sorted(files.files, key=order):
        atomic_write(Path(outdir) / _inside(rel), files.files[rel])


class RayExecutor:
    """Checks Ray and the address on creation; :meth:`start` connects (or starts a local instance) and checks the
    cluster can run every profile; :meth:`run` does the work; :meth:`close` disconnects what it started."""

    def __init__(self, address: str | None = None):
        self.ray = require_ray()
        self.address = address
        if address is not None:
            probe_address(address)
        self.local = address is None and not self.ray.is_initialized()  # False: a cluster, or a caller's connection
        self.owned = False
        self.temp: str | None = None
        self.nodes: list[dict[str, Any]] = []

    def start(self, profs: list, missing: dict[str, list[str]], allow_fallback: bool, say=None) -> None:
        ray = self.ray
        say = say or (lambda msg: None)
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
        try:
            if ray.is_initialized():
                have = ray.get_runtime_context().gcs_address
                if self.address is not None and have != self.address.strip():
                    raise InputError(f"this process is already connected to the Ray cluster at {have}, not --ray-address "
                                     f"{self.address}; disconnect first (ray.shutdown()) or drop --ray-address")
                say("using this process's existing Ray connection")
            elif self.address is None:
                runnable = [p for p in profs if allow_fallback or not missing[p.name]]
                self._check_local([p for p in profs if p not in runnable], missing)  # refused before the instance starts
                resources = {profile_resource(p.name): 1.0 for p in runnable}
                resources[TIMING_RESOURCE] = 1.0
                self.temp = tempfile.mkdtemp(prefix="onnxq-ray-")
                try:
                    ray.init(address="local", resources=resources, include_dashboard=False, _temp_dir=self.temp, **quiet)
                except Exception as e:  # Ray raises its own RuntimeError/ConnectionError types
                    raise ProviderError(f"could not start a local Ray instance: {first_line(e)}") from e
                self.owned = True
                say(f"started a local Ray instance ({int(ray.cluster_resources().get('CPU', 0))} CPUs) for "
                    f"{', '.join(p.name for p in runnable) or 'no profile'}")
            else:
                try:
                    ray.init(address=self.address, **quiet)
                except Exception as e:  # Ray raises its own ConnectionError/RuntimeError types
                    raise InputError(f"cannot join the Ray cluster at {self.address}: {first_line(e)}; run onnxq on a node "
                                     "of that cluster (e.g. its head)") from e
                self.owned = True
                say(f"connected to the Ray cluster at {self.address}")
            self._check(profs, missing)
        except BaseException:
            self.close()
            raise

    def _check_local(self, unrunnable: list, missing: dict[str, list[str]]) -> None:
        if unrunnable:
            p = unrunnable[0]
            raise ProviderError(f"profile {p.name!r} needs the Ray resource {profile_resource(p.name)}, which onnxq's local Ray "
                                f"instance does not advertise: this host lacks {', '.join(missing[p.name])}; pass --ray-address "
                                "of a cluster with a node that has it, or --allow-fallback to run it here (marked FALLBACK)")

    def _check(self, profs: list, missing: dict[str, list[str]]) -> None:
        """Every profile has a live node advertising it with the timing lock and a CPU (else its tasks would wait forever)."""
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        self.nodes = [{"node_id": n["NodeID"], "ip": n["NodeManagerAddress"], "hostname": n.get("NodeManagerHostname"),
                       "resources": {k: v for k, v in n["Resources"].items() if k.startswith("onnxq:") or k == "CPU"}}
                      for n in nodes]
        for n in self.nodes:
            lock = n["resources"].get(TIMING_RESOURCE)
            if lock is not None and abs(lock - 1.0) > 1e-9:
                raise ProviderError(f"node {_where(n)} advertises {TIMING_RESOURCE}: {lock:g}; it is the node's timing lock and "
                                    f"must be exactly 1 (restart it with --resources '{{\"{TIMING_RESOURCE}\": 1, ...}}')")
        for p in profs:
            need = profile_resource(p.name)
            spec = f"--resources '{{\"{need}\": 1, \"{TIMING_RESOURCE}\": 1}}'"
            can = [n for n in self.nodes if n["resources"].get(need, 0) >= SHARE]
            if not can:
                raise ProviderError(f"profile {p.name!r} needs the Ray resource {need}, which no live node of the cluster "
                                    f"advertises; start a node that can run it with `ray start --address HEAD:PORT {spec}`")
            if not [n for n in can if n["resources"].get(TIMING_RESOURCE) and n["resources"].get("CPU", 0) >= 1]:
                raise ProviderError(f"profile {p.name!r}: the nodes advertising {need} lack {TIMING_RESOURCE} (each node's "
                                    f"timing lock) or a CPU, so its tasks would wait forever; start them with {spec}")

    def run(self, profs: list, plans: dict[str, list], run: Any) -> list[dict[str, Any]]:
        """Every variant of every profile as Ray tasks; returns the profiles' result dicts in order."""
        from .compare import _bar

        ray = self.ray
        opts = {"num_cpus": 1, "max_retries": 0}
        variant_fn = ray.remote(**opts)(_variant_task)
        timing_fn = ray.remote(**opts)(_timing_task)
        shipped_run = dataclasses.replace(run, qat_done={}, progress=False)  # QAT results that ran here travel as files
        run_ref = ray.put(shipped_run)
        model_ref = ray.put(_Files.of_model(run.model))
        calib_ref = ray.put(_Files.of_path(run.calib))
        states = [_ProfileRun(p, plans[p.name], run, ray.put) for p in profs]
        pending: dict[Any, tuple] = {}
        for st in states:
            if not st.fresh:
                continue
            res = {profile_resource(st.prof.name): SHARE, TIMING_RESOURCE: SHARE}
            ref_box = None
            for group in st.groups:  # FP32's group first: its outputs are every other variant's reference
                names = ",".join(st.plan[i].name for i in group)
                reply, files, outs = variant_fn.options(num_returns=3, resources=res, name=f"onnxq {st.prof.name}/{names}").remote(
                    run_ref, st.prof, st.items(group), model_ref, calib_ref, ref_box)
                if any(st.plan[i].kind == "fp32" for i in group):
                    ref_box = [outs]
                pending[reply] = ("variant", st, group, files)
        bar = _bar(sum(len(s.groups) + 1 for s in states if s.fresh), "ray: tasks", run.progress)
        try:
            while pending:
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                kind, st, group, files = pending.pop(ready)
                bar.update()
                if kind == "timing":
                    st.timed(ready, ray)
                    continue
                st.took(group, ready, files, ray)
                if st.left == 0:
                    if not any(r.ok for r in st.recs) or (st.missing and not run.allow_fallback):
                        bar.update()
                        continue  # nothing to time, or nowhere to time it on the profile's providers
                    shipped = {i: st.ship[i] for i, r in enumerate(st.recs) if r.ok and i in st.ship}
                    res = {profile_resource(st.prof.name): SHARE, TIMING_RESOURCE: 1.0}
                    reply = timing_fn.options(resources=res, name=f"onnxq {st.prof.name}/latency").remote(
                        run_ref, st.prof, st.recs, shipped, model_ref)
                    pending[reply] = ("timing", st, None, None)
        finally:
            bar.close()
            for ref in pending:  # interrupted: leave nothing running on the cluster
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
        return [st.finish(self.local) for st in states]

    def describe(self) -> dict[str, Any]:
        """The ``executor`` entry of the report."""
        return {"kind": "ray", "ray": self.ray.__version__,
                "cluster": "local instance started by onnxq" if self.local else (self.address or "the caller's Ray connection"),
                "nodes": self.nodes,
                "placement": {"profile": profile_resource("<name>"), "timing_lock": TIMING_RESOURCE, "build_share": SHARE},
                "data": "model, calibration data and built variants moved as bytes in Ray objects; written here by the driver"}

    def close(self) -> None:
        if self.owned:
            with contextlib.suppress(Exception):
                self.ray.shutdown()
            self.owned = False
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp = None
