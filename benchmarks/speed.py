"""Time-to-quality: the seeds' training loop against convae's default recipe, side by side.

    python benchmarks/speed.py                       # all three architectures, 3 repeats, table
    python benchmarks/speed.py --archs seed-strided --repeats 1 --json

For each architecture, in one run on the same data split and machine, each job in its own
subprocess (so peak memory is per job):

* ``reference``: written the seeds' way - torch's own conv modules (convae's matrix-product code
  layers swapped back), a Dataset converting every image on its own (as torchvision's ToTensor
  does), DataLoader batch 20, Adam 1e-3, MSE, ``loss.item()`` every step, 30 epochs (10 for
  seed-keras2d, as seed 004 trains);
* ``convae``: ``convae.training.train`` with the default recipe (``--epochs`` per arch below), the
  whole command's work timed from data loading on; the test MSE is measured after every epoch
  with the clock paused, to find when it first reaches the reference's final test MSE.

Also measured: the fastest eager training step we could write for the model (hand-written loop,
best of fp32/bf16 x contiguous/channels_last, pre-normalized data) against convae's own step at the
same batch size, and data loading (full-size IDX decode, sample cold and cached).

Reports medians over ``--repeats``. Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCHS = {  # arch -> (latent, reference epochs, convae epochs; None = the arch's default recipe)
    "seed-strided": (12, 30, None),
    "seed-keras2d": (2, 10, None),
    "convae": (12, 30, None),  # ours (target: test MSE <= 0.012 within 30 s)
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _torch_modules(model) -> None:
    """Swap convae's matrix-product code layers (models.CodeConv2d / CodeConvTranspose2d) for the
    torch modules the seeds use: the same parameters and function, torch's convolution kernels."""
    from torch import nn

    from convae.models import CodeConv2d, CodeConvTranspose2d

    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, (CodeConv2d, CodeConvTranspose2d)):
                kind = nn.Conv2d if isinstance(child, CodeConv2d) else nn.ConvTranspose2d
                plain = kind(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    bias=child.bias is not None,
                )
                plain.load_state_dict(child.state_dict())
                setattr(parent, name, plain)


def job_reference(arch: str, latent: int, epochs: int, seed: int) -> dict:
    import torch
    from torch.utils.data import DataLoader, Dataset

    from convae.config import ModelConfig
    from convae.data import load_dataset
    from convae.models import build_model

    tr, _ = load_dataset("mnist-sample", "train", val_fraction=0.1)
    te, _ = load_dataset("mnist-sample", "test")
    train_np = tr.numpy()

    class PerItem(Dataset):  # the seeds: one PIL/ndarray -> float tensor conversion per image
        def __len__(self):
            return len(train_np)

        def __getitem__(self, i):
            return torch.from_numpy(train_np[i]).float().div(255.0), 0

    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=arch, latent_dim=latent, mean_image=False))  # as the seeds
    with torch.random.fork_rng(devices=[]):  # new modules draw an init: keep the loader's shuffles
        _torch_modules(model)  # and with torch's own layers, as the seeds write them
    loader = DataLoader(PerItem(), batch_size=20, shuffle=True, num_workers=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = torch.nn.MSELoss()
    t0 = time.perf_counter()
    for _ in range(epochs):
        running = 0.0
        for images, _ in loader:
            opt.zero_grad()
            out = model(images)
            loss = crit(out, images)
            loss.backward()
            opt.step()
            running += loss.item() * images.size(0)
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.inference_mode():
        x = te.float() / 255.0
        y = model(x).clamp(0, 1)
        mse = float(((y - x) ** 2).mean())
    return {
        "seconds": seconds,
        "test_mse": mse,
        "images_per_s": epochs * len(train_np) / seconds,
        "peak_mb": _peak_mb(),
    }


def job_convae(
    arch: str,
    latent: int,
    epochs: int | None,
    seed: int,
    target: float | None,
    recipe: dict | None = None,
) -> dict:
    # Start-up, excluded from the timed work as the issue asks: the imports a `convae train` process
    # pays once - torch, convae, matplotlib/scikit-image (plots, SSIM) and torch._dynamo, which
    # torch.optim imports when the first optimizer is built. Measured and reported separately.
    t_import = time.perf_counter()
    import matplotlib.figure  # noqa: F401
    import skimage.metrics  # noqa: F401
    import torch
    import torch._dynamo  # noqa: F401

    from convae.config import ModelConfig, RunConfig, TrainConfig, recipe_for
    from convae.data import load_dataset
    from convae.inference import evaluate
    from convae.runtime import auto_threads
    from convae.training import train

    torch.set_num_threads(auto_threads())  # as `convae train` does
    startup = time.perf_counter() - t_import
    te, _ = load_dataset("mnist-sample", "test")
    overrides = {**({"epochs": epochs} if epochs else {}), **(recipe or {})}
    model_over = {k: overrides.pop(k) for k in list(overrides) if k in ("mean_image",)}
    cfg = RunConfig(
        model=ModelConfig(arch=arch, latent_dim=latent, **model_over),
        train=TrainConfig(seed=seed, **overrides),
    )
    paused = 0.0
    curve: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    state: dict = {}

    def progress(ev):
        nonlocal paused
        if ev["event"] != "epoch":
            return
        p0 = time.perf_counter()
        model = state["model"]
        mse = evaluate(model, te, ssim=False)["mse"]
        model.train()
        curve.append((p0 - t0 - paused, mse))
        paused += time.perf_counter() - p0

    # Grab the model fit() trains, to score it per epoch without touching the run directory.
    from convae import training as T

    orig_fit = T.fit

    def spy_fit(model, *a, **k):
        state["model"] = model
        return orig_fit(model, *a, **k)

    T.fit = spy_fit
    with tempfile.TemporaryDirectory() as d:
        try:
            train(cfg, Path(d) / "run", device="cpu", progress=progress)
        finally:
            T.fit = orig_fit
        total = time.perf_counter() - t0 - paused
        metrics = json.loads((Path(d) / "run" / "metrics.json").read_text())
        hist = [
            json.loads(line)
            for line in (Path(d) / "run" / "history.jsonl").read_text().splitlines()
        ]
    fit_seconds = sum(r["seconds"] for r in hist)
    reach = next((t for t, m in curve if target is not None and m <= target), None)
    n_train = 3600
    recipe_used = recipe_for(arch).fill(cfg.train)
    return {
        "seconds": total,
        "fit_seconds": fit_seconds,
        "test_mse": metrics["mse"],
        "time_to_target": reach,
        "curve": curve,
        "epochs": len(hist),
        "images_per_s": len(hist) * n_train / fit_seconds,
        "peak_mb": _peak_mb(),
        "threads": torch.get_num_threads(),
        "startup_seconds": startup,
        "recipe": {
            **{
                k: getattr(recipe_used, k)
                for k in ("epochs", "optimizer", "batch_size", "lr", "warmup", "precision")
            },
            "mean_image": cfg.model.mean_image,
        },
    }


def job_step(arch: str, latent: int, batch: int, steps: int = 60, rounds: int = 5) -> dict:
    """Fastest hand-written eager step vs convae's fit() step, same model and batch size."""
    import torch
    import torch.nn.functional as F

    from convae.config import ModelConfig, TrainConfig, recipe_for
    from convae.data import load_dataset
    from convae.models import build_model
    from convae.optim import build_optimizer
    from convae.training import fit

    tr, _ = load_dataset("mnist-sample", "train")
    xf = tr.float().div(255.0)
    # The hand-written step uses the optimizer of convae's default recipe for the arch (Muon or
    # AdamW), so the ratio measures the loop, not the optimizer; "adamw" rows show what Muon costs.
    default_opt = recipe_for(arch).optimizer
    steppers = {}
    for opt_name, amp, cl in itertools.product(
        dict.fromkeys((default_opt, "adamw")), (False, True), (False, True)
    ):
        torch.manual_seed(0)
        m = build_model(ModelConfig(arch=arch, latent_dim=latent))
        if cl:
            m = m.to(memory_format=torch.channels_last)
        opt = build_optimizer(list(m.parameters()), TrainConfig(optimizer=opt_name, lr=1e-3))
        xs = xf.contiguous(memory_format=torch.channels_last) if cl else xf
        n = len(xs) // batch

        def step(i, m=m, opt=opt, xs=xs, n=n, amp=amp):
            xb = xs[(i % n) * batch : (i % n + 1) * batch]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                y = m(xb)
            loss = F.mse_loss(y.float(), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for i in range(10):
            step(i)
        steppers[f"{opt_name} {'bf16' if amp else 'fp32'}{'+cl' if cl else ''}"] = step

    def ours_once() -> float:  # convae's own loop: same batch, no validation, steps only
        torch.manual_seed(0)
        m = build_model(ModelConfig(arch=arch, latent_dim=latent))
        h = fit(m, sub, None, TrainConfig(epochs=2, batch_size=batch))
        # the second epoch: the first pays for a fresh model's first steps (state, kernel choice),
        # which the hand-written candidates paid in their warm-up
        return len(sub) // batch * batch / h[1]["seconds"]

    sub = tr[: batch * steps]
    ours_once()  # warm-up
    # Best of `rounds`, every candidate timed once per round in turn: the machine's speed drifts by
    # +-30 % within minutes, and interleaving gives every candidate the same chances.
    best = dict.fromkeys(steppers, 0.0)
    ours = 0.0
    for _ in range(rounds):
        for name, step in steppers.items():
            t = time.perf_counter()
            for i in range(steps):
                step(i)
            best[name] = max(best[name], steps * batch / (time.perf_counter() - t))
        ours = max(ours, ours_once())
    # torch.compile of the same step (default inductor mode, fp32 + channels_last): is it worth it here?
    compiled = None
    try:
        torch.manual_seed(0)
        m = build_model(ModelConfig(arch=arch, latent_dim=latent)).to(
            memory_format=torch.channels_last
        )
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        cm = torch.compile(m)
        xs = xf.contiguous(memory_format=torch.channels_last)
        n = len(xs) // batch

        def cstep(i):
            xb = xs[(i % n) * batch : (i % n + 1) * batch]
            loss = F.mse_loss(cm(xb), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t = time.perf_counter()
        for i in range(3):
            cstep(i)
        warm = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(steps):
            cstep(i)
        compiled = {
            "images_per_s": steps * batch / (time.perf_counter() - t),
            "compile_seconds": warm,
        }
    except Exception as e:  # noqa: BLE001 - no compiler toolchain: report it, don't fail the benchmark
        compiled = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    top = max(v for k, v in best.items() if k.startswith(default_opt + " "))
    return {
        "optimizer": default_opt,
        "hand_written": best,
        "fastest": top,
        "convae": ours,
        "ratio": ours / top,
        "compiled": compiled,
    }


def job_data() -> dict:
    import numpy as np

    from convae.data import _load_raw, load_dataset, read_idx

    out = {}
    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        for name, n in (("train", 60000), ("t10k", 10000)):
            imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            hdr = np.array([0x00000803, n, 28, 28], dtype=">u4").tobytes()
            (Path(d) / f"{name}-images-idx3-ubyte.gz").write_bytes(
                gzip.compress(hdr + imgs.tobytes(), 1)
            )
        t = time.perf_counter()
        a = read_idx(Path(d) / "train-images-idx3-ubyte.gz")
        b = read_idx(Path(d) / "t10k-images-idx3-ubyte.gz")
        out["idx_70k_seconds"] = time.perf_counter() - t
        assert len(a) + len(b) == 70000
        os.environ["CONVAE_CACHE"] = d
        _load_raw.cache_clear()
        t = time.perf_counter()
        load_dataset("mnist-sample", "train")
        out["sample_cold_seconds"] = time.perf_counter() - t
        _load_raw.cache_clear()
        t = time.perf_counter()
        load_dataset("mnist-sample", "train")
        out["sample_cached_seconds"] = time.perf_counter() - t
    return out


def _run_job(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--job", *args], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"job {args} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _median(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--convae-epochs", type=int, default=None, help="override convae's default epochs"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="ARCH:KEY=VALUE,...",
        help="also train a labelled non-default recipe for ARCH, e.g. "
        "seed-strided:epochs=20,lr=0.02,precision=fp32 or seed-strided:mean_image=false "
        "(repeatable)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--job", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.job:
        kind, *rest = a.job
        if kind == "reference":
            res = job_reference(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        elif kind == "convae":
            res = job_convae(
                rest[0],
                int(rest[1]),
                int(rest[2]) or None,
                int(rest[3]),
                float(rest[4]) if rest[4] != "none" else None,
                json.loads(rest[5]) if len(rest) > 5 else None,
            )
        elif kind == "step":
            res = job_step(rest[0], int(rest[1]), int(rest[2]))
        else:
            res = job_data()
        print(json.dumps(res))
        return 0

    import torch

    from convae.config import recipe_for

    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "data": _run_job(["data"]),
        "archs": {},
    }
    variants: dict[str, list[dict]] = {}
    for v in a.variant:
        arch, _, kv = v.partition(":")
        if arch not in ARCHS or not kv:
            ap.error(
                f"--variant {v!r}: expected ARCH:KEY=VALUE,... with ARCH one of {', '.join(ARCHS)}"
            )
        recipe = {}
        for item in kv.split(","):
            k, _, val = item.partition("=")
            if k == "mean_image":
                recipe[k] = val.lower() in ("1", "true", "on", "yes")
            else:
                recipe[k] = (
                    val
                    if k in ("precision", "optimizer")
                    else (int(val) if k in ("epochs", "batch_size") else float(val))
                )
        variants.setdefault(arch, []).append(recipe)
    for arch in a.archs.split(","):
        latent, ref_epochs, conv_epochs = ARCHS[arch]
        conv_epochs = a.convae_epochs or conv_epochs or 0
        refs, ours = [], []
        var_runs: list[list[dict]] = [[] for _ in variants.get(arch, [])]
        for rep in range(a.repeats):
            ref = _run_job(["reference", arch, str(latent), str(ref_epochs), str(rep)])
            refs.append(ref)
            ours.append(
                _run_job(
                    ["convae", arch, str(latent), str(conv_epochs), str(rep), str(ref["test_mse"])]
                )
            )
            print(
                f"{arch} #{rep}: reference {ref['seconds']:.1f}s mse {ref['test_mse']:.5f} | convae "
                f"{ours[-1]['seconds']:.1f}s mse {ours[-1]['test_mse']:.5f} reach "
                f"{ours[-1]['time_to_target']}",
                file=sys.stderr,
                flush=True,
            )
            for k, recipe in enumerate(variants.get(arch, [])):
                var_runs[k].append(
                    _run_job(
                        [
                            "convae",
                            arch,
                            str(latent),
                            "0",
                            str(rep),
                            str(ref["test_mse"]),
                            json.dumps(recipe),
                        ]
                    )
                )
                print(
                    f"{arch} #{rep} variant {recipe}: {var_runs[k][-1]['seconds']:.1f}s mse "
                    f"{var_runs[k][-1]['test_mse']:.5f} reach {var_runs[k][-1]['time_to_target']}",
                    file=sys.stderr,
                    flush=True,
                )
        batch = recipe_for(arch).batch_size  # the step at the recipe's batch
        step = _run_job(["step", arch, str(latent), str(batch)])
        r_sec, c_reach = _median(refs, "seconds"), _median(ours, "time_to_target")
        report["archs"][arch] = {
            "latent": latent,
            "reference_epochs": ref_epochs,
            "convae_epochs": ours[0]["epochs"],
            "reference_seconds": r_sec,
            "reference_mse": _median(refs, "test_mse"),
            "reference_images_per_s": _median(refs, "images_per_s"),
            "reference_peak_mb": _median(refs, "peak_mb"),
            "convae_seconds": _median(ours, "seconds"),
            "convae_fit_seconds": _median(ours, "fit_seconds"),
            "convae_mse": _median(ours, "test_mse"),
            "convae_images_per_s": _median(ours, "images_per_s"),
            "convae_peak_mb": _median(ours, "peak_mb"),
            "time_to_reference_mse": c_reach,
            "reached_in_all_repeats": all(o["time_to_target"] is not None for o in ours),
            "speedup_to_reference_mse": (r_sec / c_reach) if c_reach else None,
            "startup_seconds": _median(ours, "startup_seconds"),
            "step": step,
            "runs": {"reference": refs, "convae": ours},
            "variants": [
                {
                    "recipe": runs[0]["recipe"],
                    "seconds": _median(runs, "seconds"),
                    "test_mse": _median(runs, "test_mse"),
                    "time_to_reference_mse": _median(runs, "time_to_target"),
                    "reached_in_all_repeats": all(o["time_to_target"] is not None for o in runs),
                    "speedup_to_reference_mse": (r_sec / _median(runs, "time_to_target"))
                    if _median(runs, "time_to_target")
                    else None,
                    "runs": runs,
                }
                for runs in var_runs
            ],
        }
    if a.json:
        print(json.dumps(report))
        return 0
    print(f"machine: {report['machine']}")
    print(f"data: {json.dumps({k: round(v, 3) for k, v in report['data'].items()})}")
    print(
        "| arch | latent | reference (s) | ref. test MSE | convae (s) | convae test MSE | convae time to ref. MSE (s) | "
        "speed-up | ref. img/s | convae img/s | ref. peak MB | convae peak MB | step vs fastest eager |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arch, r in report["archs"].items():
        reach = f"{r['time_to_reference_mse']:.2f}" if r["time_to_reference_mse"] else "not reached"
        sp = f"{r['speedup_to_reference_mse']:.1f}x" if r["speedup_to_reference_mse"] else "-"
        print(
            f"| {arch} | {r['latent']} | {r['reference_seconds']:.1f} ({r['reference_epochs']} ep) | "
            f"{r['reference_mse']:.5f} | {r['convae_seconds']:.1f} ({r['convae_epochs']} ep) | {r['convae_mse']:.5f} | "
            f"{reach} | {sp} | {r['reference_images_per_s']:.0f} | {r['convae_images_per_s']:.0f} | "
            f"{r['reference_peak_mb']:.0f} | {r['convae_peak_mb']:.0f} | {r['step']['ratio']:.0%} |"
        )
    for arch, r in report["archs"].items():
        for v in r["variants"]:
            reach = (
                f"{v['time_to_reference_mse']:.2f}" if v["time_to_reference_mse"] else "not reached"
            )
            sp = f"{v['speedup_to_reference_mse']:.1f}x" if v["speedup_to_reference_mse"] else "-"
            print(
                f"variant {arch} {v['recipe']}: {v['seconds']:.1f}s test MSE {v['test_mse']:.5f}, "
                f"time to ref. MSE {reach}, speed-up {sp}"
            )
    step_rows = {arch: r["step"] for arch, r in report["archs"].items()}
    print(f"fastest eager step vs convae (images/s): {json.dumps(step_rows)}")
    print(
        f"start-up (imports, excluded above): {json.dumps({k: round(r['startup_seconds'], 2) for k, r in report['archs'].items()})}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
