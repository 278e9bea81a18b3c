"""Run directories on disk: weights in safetensors, config in JSON, trainer state apart.

Layout of a run directory::

    config.json          the resolved RunConfig (architecture, hyper-parameters, data, version)
    model.safetensors    best weights (lowest validation loss) - what `load(run)` uses
    last.safetensors     weights after the last finished epoch (for --resume)
    trainer.safetensors  optimizer tensors  } written together at the end of each epoch,
    trainer.json         epoch, step, best, optimizer scalars, history }  for an exact resume
    history.jsonl        one JSON object per epoch
    metrics.json         test metrics

Every write goes to a temporary file in the same folder and is moved into place with
``os.replace``, so a crash never leaves a half-written file. Nothing here unpickles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import RunConfig

__all__ = [
    "atomic_write",
    "write_json",
    "read_json",
    "save_weights",
    "load_weights",
    "save_trainer_state",
    "load_trainer_state",
    "fingerprint",
    "check_run_dir",
]


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temp file + fsync + ``os.replace``.

    The temp file sits in the same folder (so the rename is atomic) under a short name of its
    own: a legal 255-byte file name must not become an illegal temp name. It is removed on any
    failure, and ``path`` is then untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # an ancestor is a file
        raise NotADirectoryError(
            f"{path}: cannot make its folder {path.parent}; a file is in the way"
        ) from None
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".convae-", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; give it the permissions a plain open() would (0666 - umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            fd = -1  # owned by f now, closed by the with
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _state_to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_weights(
    module: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Save a module's state dict as safetensors, atomically."""
    atomic_write(path, st_save(_state_to_cpu(module.state_dict()), metadata=metadata))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise ValueError(f"{path}: corrupt or not a safetensors file ({e})") from e


def save_trainer_state(
    run_dir: Path, optimizer: torch.optim.Optimizer, info: dict[str, Any]
) -> None:
    """Optimizer tensors to safetensors, everything else (scalars, epoch, history) to JSON.

    The JSON is written last: it names the state as complete, so a crash between the two writes
    leaves the previous JSON pointing at a mismatched tensor file only if the epoch count agrees —
    we guard against that with a shared ``token``.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    token = hashlib.sha256(os.urandom(16)).hexdigest()[:16]
    atomic_write(
        run_dir / "trainer.safetensors", st_save(_state_to_cpu(tensors), metadata={"token": token})
    )
    write_json(
        run_dir / "trainer.json",
        {**info, "token": token, "param_groups": sd["param_groups"], "scalars": scalars},
    )


def load_trainer_state(run_dir: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer in place and return the trainer info saved with it."""
    info = read_json(run_dir / "trainer.json")
    path = run_dir / "trainer.safetensors"
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: corrupt trainer state ({e}); cannot resume") from e
    if meta.get("token") != info.get("token"):
        raise ValueError(
            f"{run_dir}: trainer.json and trainer.safetensors do not match; cannot resume"
        )
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, extra in info.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    _match_param_layout(optimizer)
    return info


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


def fingerprint(state: dict[str, torch.Tensor], cfg: RunConfig) -> bytes:
    """16-byte hash of the weights and the model config: identifies a model across machines."""
    h = hashlib.sha256()
    h.update(json.dumps(cfg.to_dict()["model"], sort_keys=True).encode())
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
