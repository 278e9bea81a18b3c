"""Anomaly detection: threshold calibration on normal data, scores, metrics, and the CLI end to end
on a tiny one-class run (digit 0 of mnist-sample, so its validation split holds normal images only)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import last_json, run_cli

import convae
from convae import anomaly, anomaly_bench
from convae.data import load_dataset
from convae.images import write_png

# One-class run: the default architecture at width 8, digit 0 only, a few quick epochs.
ONE_CLASS = ["--classes", "0", "--arch", "convae", "--width", "8", "--latent-dim", "8", "--epochs", "3",
             "--batch-size", "32", "--seed", "0", "--device", "cpu"]  # fmt: skip


def with_square(x: torch.Tensor, side: int = 8) -> torch.Tensor:
    """A copy of uint8 images [N, C, H, W] with a white square pasted in the middle."""
    y = x.clone()
    h = x.shape[-1]
    a = (h - side) // 2
    y[..., a : a + side, a : a + side] = 255
    return y


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("anomaly") / "run"
    rc, out, err = run_cli("train", *ONE_CLASS, "--out", d, "--json")
    assert rc == 0, err
    return d


# ---------------------------------------------------------------------------------------------
# Pure pieces


def test_threshold_flags_requested_fraction_of_new_normal_scores():
    rng = np.random.default_rng(0)
    normal = rng.lognormal(-4.0, 0.5, 4000)  # reconstruction errors are roughly log-normal
    fresh = rng.lognormal(-4.0, 0.5, 40000)
    for fpr in (0.01, 0.05, 0.2):
        t = anomaly.threshold_at_fpr(normal, fpr)
        assert abs((fresh > t).mean() - fpr) < 0.25 * fpr + 0.003


def test_threshold_is_unbiased_for_few_normal_images():
    # With n = 19 normal scores and FPR 0.1 the threshold is the 18th of 19: a new normal score lands
    # above it with probability exactly 2 / 20. The plain sample quantile would give ~0.14.
    rng = np.random.default_rng(1)
    hits, plain = [], []
    for _ in range(2000):
        normal, new = rng.normal(size=19), rng.normal(size=50)
        hits.append((new > anomaly.threshold_at_fpr(normal, 0.1)).mean())
        plain.append((new > np.quantile(normal, 0.9)).mean())
    assert abs(np.mean(hits) - 0.1) < 0.01
    assert np.mean(plain) > 0.125  # what the textbook quantile would have done


def test_threshold_rejects_bad_rates():
    with pytest.raises(ValueError, match="false-positive rate"):
        anomaly.threshold_at_fpr(np.ones(5), 0.0)
    with pytest.raises(ValueError, match="no normal images"):
        anomaly.threshold_at_fpr(np.zeros(0), 0.05)


def test_detection_metrics_known_values():
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.35])
    y = np.array([0, 0, 0, 0, 1, 1, 1], dtype=bool)
    m = anomaly.detection_metrics(s, y, threshold=0.32)  # flags 0.4, 0.9, 0.8, 0.35
    assert m["auroc"] == pytest.approx(11 / 12)  # 0.35 ranks below 0.4 only
    assert (m["precision"], m["recall"], m["fpr"], m["flagged"]) == (0.75, 1.0, 0.25, 4)
    assert m["f1"] == pytest.approx(2 * 0.75 / 1.75)
    with pytest.raises(ValueError, match="both normal and anomalous"):
        anomaly.detection_metrics(s, np.zeros(7, dtype=bool))


def test_error_maps_shape_and_values():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.zeros(2, 3, 4, 4)
    y[1, :, 0, 0] = 0.5
    e = anomaly.error_maps(x, y)
    assert e.shape == (2, 4, 4)
    assert e[1, 0, 0] == pytest.approx(0.25) and e.sum() == pytest.approx(0.25)


def test_ssim_heat_map_averages_to_the_ssim_score():
    from convae.inference import to_float
    from convae.metrics import ssim_per_image

    x = to_float(load_dataset("mnist-sample", "test", classes=[3])[0][:4])
    y = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    maps = anomaly.error_maps(x, y, "ssim")  # [4, 28, 28]
    # scikit-image's mean SSIM leaves out a border of half its 11-px window
    assert np.allclose(
        maps[:, 5:-5, 5:-5].double().mean((1, 2)).numpy(), 1 - ssim_per_image(x, y), atol=1e-5
    )
    assert (anomaly.score_images(None, torch.zeros(0, 1, 28, 28), "ssim") == np.zeros(0)).all()


def test_combined_score_is_the_sum_of_parts_scaled_by_their_normal_medians(run):
    model = convae.load(run)
    normal = load_dataset("mnist-sample", "val", classes=[0])[0]
    det = anomaly.calibrate(model, normal, score="mse+ssim")
    mse, dssim = (anomaly.score_images(model, normal, k) for k in ("mse", "ssim"))
    assert det.scales == pytest.approx({"mse": np.median(mse), "ssim": np.median(dssim)})
    s = anomaly.score_images(model, normal, det)
    assert s == pytest.approx(mse / det.scales["mse"] + dssim / det.scales["ssim"])
    assert np.median(s) == pytest.approx(2.0, abs=0.5)  # "about 2 for a typical normal image"
    with pytest.raises(ValueError, match="calibrated detector"):
        anomaly.score_images(model, normal, "mse+ssim")


def test_pca_baseline_scores_off_subspace_images_higher():
    x, _ = load_dataset("mnist-sample", "train", classes=[1])
    s = anomaly_bench.pca_scores(
        x[:200], torch.cat([x[200:220], with_square(x[200:220])]), components=8
    )
    assert (s[20:] > s[:20]).all()


# ---------------------------------------------------------------------------------------------
# A trained one-class model


def test_white_square_scores_higher_than_clean_digit(run):
    model = convae.load(run)
    x, _ = load_dataset("mnist-sample", "test", classes=[0])
    x = x[:20]
    for score in anomaly.SCORES:
        det = anomaly.calibrate(
            model, load_dataset("mnist-sample", "val", classes=[0])[0], score=score
        )
        clean = anomaly.score_images(model, x, det)
        pasted = anomaly.score_images(model, with_square(x), det)
        assert (pasted > clean).all(), score


def test_calibrated_threshold_flags_about_the_requested_fraction_of_normal_images(run):
    rc, out, err = run_cli("anomaly", run, "--calibrate", "--fpr", "0.25", "--json")
    assert rc == 0, err
    det = anomaly.load_detector(run)
    assert det is not None and det.fpr == 0.25 and det.n_calibration == 40
    assert det.calibration_data["classes"] == [0] and det.calibration_data["split"] == "val"
    model = convae.load(run)
    val, _ = load_dataset("mnist-sample", "val", classes=[0])
    assert det.flag(anomaly.score_images(model, val, det)).mean() == pytest.approx(0.25, abs=0.03)
    # Unseen normal images (the 100 test zeros): about a quarter, within the noise of 40 calibration images.
    test, _ = load_dataset("mnist-sample", "test", classes=[0])
    assert 0.1 <= det.flag(anomaly.score_images(model, test, det)).mean() <= 0.45
    # The stored threshold is reused as is; a change of the weights makes it stale and refits it.
    rc, out, _ = run_cli("anomaly", run, "--data", "mnist-sample", "--top", "0", "--json")
    assert (
        last_json(out)["threshold"] == det.threshold and last_json(out)["calibrated_now"] is False
    )
    stale = {**det.to_dict(), "fingerprint": "0" * 32, "threshold": -1.0}
    (run / "anomaly.json").write_text(json.dumps(stale))
    rc, out, _ = run_cli("anomaly", run, "--data", "mnist-sample", "--top", "0", "--json")
    assert rc == 0 and last_json(out)["calibrated_now"] is True
    assert anomaly.load_detector(run).threshold == pytest.approx(det.threshold)


def test_cli_scores_files_into_csv(run, tmp_path):
    x, _ = load_dataset("mnist-sample", "test", classes=[0])
    imgs = torch.cat([x[:3], with_square(x[:3])])
    names = ["clean0", "clean1", "clean2", "square0", "square1", "square2"]
    for n, img in zip(names, imgs, strict=True):
        write_png(img, tmp_path / "in" / f"{n}.png")
    rc, out, err = run_cli("anomaly", run, tmp_path / "in", "--csv", tmp_path / "scores.csv",
                           "--out", tmp_path / "plots", "--top", "4")  # fmt: skip
    assert rc == 0, err
    assert "image(s) flagged" in out
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "score", "flagged"]
    assert [Path(r["path"]).stem for r in rows] == names
    det = anomaly.load_detector(run)
    for r in rows:
        assert r["flagged"] == str(int(float(r["score"]) > det.threshold))
    scores = [float(r["score"]) for r in rows]
    assert all(
        scores[i + 3] > scores[i] for i in range(3)
    )  # each pasted square scores above its digit
    assert (tmp_path / "plots" / "heatmaps.png").stat().st_size > 1000


def test_cli_dataset_mode_reports_metrics_and_plots(run, tmp_path):
    rc, out, err = run_cli("anomaly", run, "--data", "mnist-sample", "--split", "test", "--normal-classes", "0",
                           "--out", tmp_path, "--json")  # fmt: skip
    assert rc == 0, err
    r = last_json(out)
    assert r["n_normal"] == 100 and r["n_anomalous"] == 900
    assert 0.5 < r["auroc"] <= 1 and 0 < r["auprc"] <= 1
    for k in ("precision", "recall", "f1", "fpr", "threshold"):
        assert k in r
    assert Path(r["roc"]).is_file() and Path(r["heatmaps"]).is_file()
    rc, out, err = run_cli("anomaly", run, "--data", "mnist-sample", "--out", tmp_path)
    assert rc == 0 and "AUROC" in out and "precision" in out


def test_cli_user_mistakes_are_one_line(run, tmp_path):
    for args in (
        ("anomaly", run, tmp_path, "--data", "mnist-sample"),  # both inputs and --data
        ("anomaly", run),  # nothing to score
        ("anomaly", run, tmp_path / "missing.png"),
        ("anomaly", run, "--data", "mnist-sample", "--normal-classes", "0,1,2,3,4,5,6,7,8,9"),
    ):
        rc, out, err = run_cli(*args)
        assert (
            rc == 1 and len(err.strip().splitlines()) == 1 and err.startswith("convae: error:")
        ), err
    rc, _, err = run_cli("anomaly", run, "--fpr", "1.5")
    assert rc == 2 and "between 0 and 1" in err


def test_normal_classes_default_to_the_runs_own(tiny_run, tmp_path):
    run2 = tmp_path / "run01"
    shutil.copytree(tiny_run, run2)  # the shared fixture stays read-only
    rc, out, err = run_cli("anomaly", run2, "--data", "mnist-sample", "--top", "0", "--json")
    assert rc == 0, err
    r = last_json(out)
    assert r["normal_classes"] == [0, 1] and r["n_normal"] == 200 and r["n_anomalous"] == 800
    # A run trained on every class has no "other" class: the user must say which labels are normal.
    cfg = json.loads((run2 / "config.json").read_text())
    cfg["data"]["classes"] = None
    (run2 / "config.json").write_text(json.dumps(cfg))
    rc, out, err = run_cli("anomaly", run2, "--data", "mnist-sample")
    assert rc == 1 and "--normal-classes" in err


def test_bench_anomaly_runs_per_class_with_pca_baseline(tmp_path):
    rc, out, err = run_cli("bench", "anomaly", "--classes", "1", "--epochs", "1", "--width", "4",
                           "--latent-dim", "4", "--out", tmp_path, "--json")  # fmt: skip
    assert rc == 0, err
    r = last_json(out)
    (row,) = r["classes"]
    assert row["class"] == 1 and row["train_images"] == 360 and row["val_images"] == 40
    for k in anomaly_bench.BENCH_SCORES:  # one epoch of a width-4 model: any value, but a valid one
        assert 0 <= row[k]["auroc"] <= 1 and 0 <= row[k]["f1"] <= 1
    assert row["pca"]["auroc"] > 0.95  # PCA on ones vs the other digits is easy
    assert r["recipe"]["preset"] == "anomaly"
    assert (
        json.loads((tmp_path / "bench.json").read_text())["mean"]["pca"]["auroc"]
        == row["pca"]["auroc"]
    )
