"""Run directories on disk: weights in safetensors, config in JSON, a crash-safe training state.

Layout of a run directory::

    config.json               the resolved RunConfig (architecture, hyper-parameters, data, version)
    model.safetensors         best weights (lowest validation loss): what `load(run)` uses
    trainer.json              the training state, and the commit point of every epoch (see below)
    state-EEEE.safetensors    weights (``model.*``) and optimizer tensors (``optim.*``) after
                              epoch EEEE; the best epoch's file is kept too while it is older
    history.jsonl             one JSON object per committed epoch
    metrics.json ...          what `convae train` writes once training is over
    .lock                     held by the process that trains the run (PID and host inside)

An epoch is committed by writing its state file under a new name, then replacing ``trainer.json``
(which names it) in one ``os.replace``: a kill at any moment leaves either the previous epoch or
the new one complete, never a mixture. ``model.safetensors`` and ``history.jsonl`` are derived
from the committed state and re-derived on resume. Every write goes to a temporary file in the
same folder, is fsynced and moved into place, so nothing is ever half-written. Nothing here
unpickles.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from .config import ModelConfig
from .limits import MemoryLimitError, check_fits
from .metrics import json_safe

__all__ = [
    "atomic_write",
    "write_json",
    "read_json",
    "save_weights",
    "load_weights",
    "read_safetensors",
    "TrainState",
    "commit_epoch",
    "read_state",
    "restore_state",
    "reconcile",
    "run_lock",
    "fingerprint",
    "check_run_dir",
]

TRAINER_FILE = "trainer.json"
STATE_FORMAT = 2
_MAX_HEADER = 100 << 20  # a safetensors header above 100 MiB is not one of ours


# ---------------------------------------------------------------------------------------------
# Atomic files


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temp file + fsync + ``os.replace``.

    The temp file sits in the same folder (so the rename is atomic) under a short name of its
    own: a legal 255-byte file name must not become an illegal temp name. It is removed on any
    failure, and ``path`` is then untouched. A symlink at ``path`` is replaced, never followed.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # an ancestor is a file
        raise NotADirectoryError(
            f"{path}: cannot make its folder {path.parent}; a file is in the way"
        ) from None
    if isinstance(data, str):
        data = data.encode("utf-8")
    # The name is chosen before the file exists, so that an interrupt at any moment (even right
    # after the file is created) finds the name in the cleanup below.
    tmp = str(path.parent / f".convae-{os.urandom(6).hex()}.tmp")
    fd = -1
    try:
        # O_EXCL: never an existing file; 0666 - umask, as a plain open() would make it
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "wb") as f:
            fd = -1  # owned by f now, closed by the with
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno and e.filename is None:  # write/fsync name no file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    _fsync_dir(path.parent)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON, atomically: an infinity is written as null with a ``KEY_inf``
    sibling (:func:`convae.metrics.json_safe`), a NaN is an error naming the file."""
    safe = json_safe(obj, where=Path(path).name)
    atomic_write(path, json.dumps(safe, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (not UTF-8 text)") from e


# ---------------------------------------------------------------------------------------------
# safetensors, read with their sizes checked first


def _state_to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_weights(
    module: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Save a module's state dict as safetensors, atomically."""
    atomic_write(path, st_save(_state_to_cpu(module.state_dict()), metadata=metadata))


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}  # fmt: skip


def _check_header(path: Path) -> None:
    """Refuse a safetensors file whose header is malformed, whose tensors lie outside the file,
    or whose tensors would not fit in memory - before anything is read or allocated."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("too short to be a safetensors file")
        n = struct.unpack("<Q", raw)[0]
        if n > min(_MAX_HEADER, size - 8):
            raise ValueError(f"header of {n} bytes does not fit the file")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    total, data = 0, size - 8 - n
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (int(v) for v in t["data_offsets"])
            want = _DTYPE_BYTES[t["dtype"]] * math.prod(int(d) for d in t["shape"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r} has a malformed entry") from None
        if not 0 <= start <= end <= data or end - start != want:
            raise ValueError(f"tensor {name!r} lies outside the file or has the wrong size")
        total += want
    check_fits(total, f"reading {path}")


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, its sizes checked before anything is read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        _check_header(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except MemoryLimitError:
        raise
    except (SafetensorError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError | PermissionError):
            raise
        raise ValueError(f"{path}: corrupt or not a safetensors file ({e})") from e


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file (sizes checked first; see :func:`read_safetensors`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    return read_safetensors(path)[0]


# ---------------------------------------------------------------------------------------------
# The training state and its per-epoch commit


@dataclass
class TrainState:
    """Where training stands after ``epoch`` committed epochs (what ``trainer.json`` records)."""

    epoch: int = 0
    step: int = 0
    best: float | None = None  # lowest validation (else training) loss so far
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one, for early stopping
    stopped_early: bool = False
    world: int = 1  # processes that trained it: the shards and the step count depend on it
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, row: dict[str, Any], score: float | None, patience: int) -> bool:
        """Add epoch ``row`` with its ``score`` (None: not validated); return whether it is the
        new best. Sets ``stopped_early`` when ``patience`` epochs passed without one."""
        self.history.append(row)
        self.epoch, self.step = row["epoch"], row["step"]
        improved = score is not None and (self.best is None or score < self.best)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = score, self.epoch, 0
        elif score is not None:
            self.bad_epochs += 1
        self.stopped_early = patience > 0 and self.bad_epochs >= patience
        return improved


def _state_name(epoch: int) -> str:
    return f"state-{epoch:04d}.safetensors"


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict, list]:
    """(tensors, scalars, param_groups) of an optimizer's state dict, for safetensors + JSON."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, scalars, sd["param_groups"]


def commit_epoch(
    run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: TrainState
) -> None:
    """Commit ``state``'s epoch: its state file, then ``trainer.json`` (the commit point), then
    the files derived from them. Older state files no longer named are removed."""
    tensors, scalars, groups = _optimizer_tensors(opt)
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    name = _state_name(state.epoch)
    atomic_write(run_dir / name, st_save(_state_to_cpu(tensors)))
    best_name = _state_name(state.best_epoch) if state.best_epoch else None
    manifest = {
        "format": STATE_FORMAT,
        **asdict(state),
        "state_file": name,
        "best_file": best_name,
        "param_groups": groups,
        "scalars": scalars,
    }
    write_json(run_dir / TRAINER_FILE, manifest)  # the commit point
    reconcile(run_dir, manifest, best_weights=model if best_name == name else None)


def _read_manifest(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / TRAINER_FILE
    if not path.is_file():
        return None
    m = read_json(path)
    if not isinstance(m, dict) or m.get("format") != STATE_FORMAT or "state_file" not in m:
        raise ValueError(
            f"{path}: not a training state this convae can resume (delete the run's trainer "
            "files to keep only its model)"
        )
    return m


def reconcile(
    run_dir: Path, manifest: dict[str, Any], best_weights: torch.nn.Module | None = None
) -> None:
    """Bring the derived files in line with the committed state: ``model.safetensors`` holds the
    best epoch's weights, ``history.jsonl`` the committed epochs, and no stale state or temp file
    remains. Cheap when they already agree; run after every commit and before resuming."""
    best = manifest.get("best_file")
    if best_weights is not None:
        save_weights(best_weights, run_dir / "model.safetensors")
    elif best is not None and not _same_weights(run_dir / "model.safetensors", run_dir / best):
        tensors, _ = read_safetensors(run_dir / best)
        model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        atomic_write(run_dir / "model.safetensors", st_save(model))
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in manifest.get("history", []))
    hist = run_dir / "history.jsonl"
    if not hist.is_file() or hist.read_text() != text:
        atomic_write(hist, text)
    keep = {manifest["state_file"], best}
    for p in run_dir.glob("state-*.safetensors"):
        if p.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    for p in run_dir.glob(".convae-*.tmp"):  # left by a kill during a write
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _same_weights(model_file: Path, state_file: Path) -> bool:
    if not model_file.is_file():
        return False
    try:
        a = read_safetensors(model_file)[0]
    except ValueError:
        return False
    b = read_safetensors(state_file)[0]
    b = {k[len("model.") :]: v for k, v in b.items() if k.startswith("model.")}
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def read_state(run_dir: str | os.PathLike) -> tuple[TrainState, dict[str, Any]] | None:
    """The committed training state of a run and its manifest, or None before the first commit."""
    run_dir = Path(run_dir)
    m = _read_manifest(run_dir)
    if m is None:
        return None
    known = TrainState.__dataclass_fields__
    try:
        state = TrainState(**{k: v for k, v in m.items() if k in known})
    except TypeError as e:
        raise ValueError(f"{run_dir / TRAINER_FILE}: malformed training state ({e})") from e
    if not (run_dir / m["state_file"]).is_file():
        raise FileNotFoundError(
            f"{run_dir}: {m['state_file']}, named by {TRAINER_FILE}, is missing; cannot resume"
        )
    return state, m


def restore_state(
    run_dir: Path, manifest: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer
) -> None:
    """Load the committed epoch's weights into ``model`` and its optimizer state into ``opt``;
    a mismatch with the model names the tensor in one line."""
    path = run_dir / manifest["state_file"]
    tensors, _ = read_safetensors(path)
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    load_matching(model, weights, path)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:  # before reconcile() would copy them into model.safetensors
        raise ValueError(
            f"{path}: {bad[0]} holds NaN or infinite values (the file is damaged); the run "
            "cannot resume from it"
        )
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            pid, name = key[len("optim.") :].split(".", 1)
            state.setdefault(int(pid), {})[name] = v
    for pid, extra in manifest.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    try:
        opt.load_state_dict({"state": state, "param_groups": manifest["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"{path}: optimizer state does not match the model ({e})") from e
    _check_param_state(opt, path)
    _match_param_layout(opt)


def _check_param_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Each per-parameter state tensor is a float scalar or has its parameter's shape: torch's
    ``load_state_dict`` does not check, and the first step would fail deep inside the kernel."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                if not isinstance(v, torch.Tensor):
                    continue
                if not v.is_floating_point() or (v.ndim and v.shape != p.shape):
                    raise ValueError(
                        f"{path}: optimizer state does not match the model ({k} is {v.dtype} "
                        f"{list(v.shape)}, its parameter {p.dtype} {list(p.shape)})"
                    )


def load_matching(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """``model.load_state_dict(weights)``, after checking names and shapes: a mismatch is one
    line naming the first differing tensor (never torch's multi-line dump)."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ValueError(
            f"{path}: weights do not match the architecture in config.json ({what}; "
            f"{len(missing)} missing, {len(extra)} unexpected)"
        )
    for k, v in own.items():
        if tuple(weights[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{path}: weights do not match the architecture in config.json ({k} is "
                f"{list(weights[k].shape)} in the file, {list(v.shape)} in the model)"
            )
    model.load_state_dict(weights)


def _match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor its parameter's memory layout (e.g. channels_last).

    safetensors stores tensors contiguous, but training keeps conv weights channels_last, and
    torch's fused AdamW kernel reads parameter, gradient and moments as flat memory: a moment in
    another layout than its parameter would silently update the wrong elements.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights of the last committed epoch (``load(run, which="last")``)."""
    found = read_state(run_dir)
    if found is None:
        raise FileNotFoundError(f"{run_dir}: no committed epoch ({TRAINER_FILE}) to load")
    tensors, _ = read_safetensors(run_dir / found[1]["state_file"])
    return {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}


# ---------------------------------------------------------------------------------------------
# One writer per run directory


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` for the block: a second writer gets one line naming the holder.

    The lock is an ``flock``, so it is released whenever its holder ends, even by SIGKILL (the
    file, PID and host inside, then stays behind unlocked); a normal exit removes it.
    """
    path = run_dir / ".lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ValueError(f"{path} is a symlink; refusing to use it as a lock") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise FileExistsError(
                f"{run_dir} is being written by another convae process ({holder}); wait for it "
                "to finish or choose another --out"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        os.close(fd)  # the holder removed or replaced the file meanwhile: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it: a waiter then sees a removed file and retries
        os.close(fd)  # releases the flock


# ---------------------------------------------------------------------------------------------
# Identity and checks


def fingerprint(state: dict[str, torch.Tensor], cfg: ModelConfig) -> bytes:
    """16-byte hash of the weights and the model config: identifies a model across machines."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:16]


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """Validate that ``run_dir`` looks like a finished convae run; raise a user-facing error if not."""
    p = Path(run_dir).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such run directory")
    if not p.is_dir():
        raise ValueError(f"{p}: not a run directory (expected a folder made by `convae train`)")
    for name in ("config.json", "model.safetensors"):
        if not (p / name).is_file():
            raise FileNotFoundError(
                f"{p}: missing {name}; is this a run directory made by `convae train`?"
            )
    return p
