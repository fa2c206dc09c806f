"""`python -m anomaly_backbones export`: the workspace's backbone + method + calibrated threshold as
one deployable model per category, and its model card.

    models/<method>/<category>/model.onnx (+ model.onnx.data)   raw uint8 image (1, 3, S, S) in;
                                                                map (1, S, S), score (1,), decision (1,) out
    models/<method>/<category>/model.json                      the model card (CARD_VERSION)
    models/<method>/<category>/openvino/model.xml|.bin         with --format openvino|all, where the
                                                                `openvino` package is installed

The fit stage keeps no model (PaDiM's inverse covariances are hundreds of MB), so export refits the
method on the same cached training features the fit stage used (the same seed and hold-out split:
the same model), builds its deployable scorer (line.scorers; PaDiM's is deploy.PadimScorer) with the
threshold from outputs/<method>/results.json, exports through deploy.export_onnx, and then checks the
export against the pipeline (and, with --format openvino|all, the OpenVINO conversion of that ONNX
file on OpenVINO's CPU plugin, by the same rule, in the card as `check_vs_pipeline_openvino`):
ONNX Runtime on every prepared test image must give the scores of outputs/<method>/<category>.npz within 1e-4 relative and the maps within 1e-3 of the largest map
value (the maps are stored as float16 there). The differences go into the card; a larger one is a
UserError and nothing is left in place.

S is data.crop: the model expects the image resized and centre-cropped as `prepare` does
(data.images.load_image); `predict` does that before calling the model.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import read_json, write_json

CARD_VERSION = 1
CARD_FORMAT = "anomaly-backbones deployable model"
SCORE_RTOL, MAP_RTOL = 1e-4, 1e-3
PREPARED, FEATURES, OUTPUTS = Path("data/prepared"), Path("data/features"), Path("outputs")


def category_threshold(root: Path, method: str, category: str) -> dict:
    """The calibrated threshold block of outputs/<method>/results.json, or a UserError saying how
    to get one."""
    path = root / OUTPUTS / method / "results.json"
    if not path.exists():
        raise UserError(f"{path} is missing: run the pipeline with `{method}` in `methods` first (dvc repro)")
    cat = read_json(path)["categories"].get(category)
    if cat is None:
        raise UserError(f"{path} has no category {category!r}")
    if not cat.get("threshold"):
        raise UserError(f"no calibrated threshold for {method} on {category}: `threshold.holdout` is 0. Calibrate "
                        f"one on held-out defect-free images: dvc exp run -S threshold.holdout=0.1 (then export)")
    return cat


def fit_for_export(root: Path, p: dict, method: str, category: str):
    """The method fitted as the fit stage fits it (same params, seed, hold-out split)."""
    from ..features import FeatureSet
    from ..holdout import fit_split
    from ..methods import get_method
    from ..pipeline.config import resolve

    train = FeatureSet(root / FEATURES / category, "train")
    r = resolve(p, shapes=train.meta["shapes"])
    m = get_method(method)(r[method], r["layers"], p["seed"])
    m.label = f"export {method} {category}"
    fit_set, _ = fit_split(train, p)
    m.fit(fit_set)
    return m, train.image_size


def onnx_runner(path: Path):
    """x (1, 3, S, S) uint8 -> (map, score, decision) through ONNX Runtime, one thread."""
    from ..backbones.ort_extractor import ort_session

    sess = ort_session(path, 1)
    return lambda x: sess.run(None, {"image": x})


def openvino_runner(xml: Path):
    """x (1, 3, S, S) uint8 -> (map, score, decision) through OpenVINO's CPU plugin in float32
    (`INFERENCE_PRECISION_HINT`: on CPUs with bf16 units the plugin's default may be bf16; a line
    that wants that speed checks its own tolerance)."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outs = [compiled.output(i) for i in range(3)]

    def run(x):
        res = compiled({"image": x})
        return [res[o] for o in outs]
    return run


def verify(run, root: Path, method: str, category: str, limit: int | None = None) -> dict:
    """An exported model (`run`: onnx_runner or openvino_runner) vs outputs/<method>/<category>.npz
    on the prepared test images."""
    from ..data.prepare import load_prepared
    from .scorers import IMAGE_LEVEL

    images = load_prepared(root / PREPARED / category, "test_images")
    n = len(images) if limit is None else min(limit, len(images))
    with np.load(root / OUTPUTS / method / f"{category}.npz") as z:
        want_s = z["scores"][:n].astype(np.float64)
        want_m = z["maps"][:n].astype(np.float32) if "maps" in z.files and method not in IMAGE_LEVEL else None
    got_s, err_m = np.empty(n), 0.0
    for i in range(n):
        x = np.ascontiguousarray(images[i:i + 1].transpose(0, 3, 1, 2))
        maps, score, _ = run(x)
        got_s[i] = float(score[0])
        if want_m is not None:
            err_m = max(err_m, float(np.abs(maps[0] - want_m[i]).max()))
    rel = np.abs(got_s - want_s) / np.maximum(np.abs(want_s), 1e-12)
    out = {"images": n, "max_score_abs_diff": float(np.abs(got_s - want_s).max()),
           "max_score_rel_diff": float(rel.max())}
    if want_m is not None:
        out["max_map_diff_rel_to_max"] = err_m / max(float(np.abs(want_m).max()), 1e-12)
    out["ok"] = out["max_score_rel_diff"] <= SCORE_RTOL and out.get("max_map_diff_rel_to_max", 0.0) <= MAP_RTOL
    return out


def git_commit(root: Path) -> str | None:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


def model_card(p: dict, method: str, category: str, fitted, bb, size: int, cat: dict, check: dict, root: Path,
               files: list[str]) -> dict:
    from .scorers import IMAGE_LEVEL

    meta = read_json(root / FEATURES / category / "meta.json")
    metrics = {k: cat.get(k) for k in ("image_auroc", "image_auroc_lo", "image_auroc_hi", "image_ap", "image_f1max",
                                       "pixel_auroc", "pixel_aupro", "pixel_f1max")}
    return {"format": CARD_FORMAT, "card_version": CARD_VERSION, "method": method, "category": category,
            "backbone": bb.name, "init": bb.init, "layers": list(getattr(fitted, "layers", meta.get("layers", []))),
            "method_params": p[method], "seed": p["seed"], "dataset": p["data"]["dataset"],
            "data_root": str(p["data"]["root"]), "preprocessing": {"resize": p["data"]["resize"], "crop": size,
                                                                   "input": "uint8 RGB (1, 3, crop, crop)",
                                                                   "normalization": "inside the model"},
            "outputs": {"map": "(1, crop, crop) float32 anomaly map" + (" (the score everywhere: image-level method)"
                                                                        if method in IMAGE_LEVEL else ""),
                        "score": "(1,) float32", "decision": "(1,) bool: score > threshold"},
            "threshold": cat["threshold"], "metrics": metrics, "metrics_note": "F1-max is an oracle (its threshold "
            "is chosen on the test labels); the threshold block's `test` rates are those of the calibrated threshold",
            "commit": git_commit(root), "files": files, "check_vs_pipeline": check}


def export_one(root: Path, p: dict, method: str, category: str, out: Path, formats: tuple[str, ...],
               limit: int | None = None) -> dict:
    """Export one category's model into out/<method>/<category>/ (replaced only when it checks)."""
    import torch

    from ..backbones import load_backbone
    from ..deploy import export_onnx
    from .scorers import DeployModel, build_scorer

    cat = category_threshold(root, method, category)
    fitted, size = fit_for_export(root, p, method, category)
    bb = load_backbone(p["backbone"], p["init"], p["seed"])
    model = DeployModel(build_scorer(method, bb, fitted, size), cat["threshold"]["image"]["threshold"]).eval()
    dest = out / method / category
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tmp = Path(tmp)
        with torch.inference_mode():
            path = export_onnx(model, tmp / "model.onnx", bb.name, size, ("map", "score", "decision"),
                               fix=f"`export` needs a backbone whose trunk exports; {bb.name} does not.")
        check = checked(verify(onnx_runner(path), root, method, category, limit), method, category, "ONNX Runtime")
        files = sorted(f.name for f in tmp.iterdir())
        card = model_card(p, method, category, fitted, bb, size, cat, check, root, files)
        if "openvino" in formats:
            card["files"] += export_openvino(path, tmp / "openvino")
            card["check_vs_pipeline_openvino"] = {**checked(verify(openvino_runner(tmp / "openvino" / "model.xml"),
                                                                   root, method, category, limit),
                                                            method, category, "OpenVINO"),
                                                  "inference_precision_hint": "f32"}
        write_json(tmp / "model.json", card)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        dest.chmod(0o755)   # TemporaryDirectory made it private
        tmp.mkdir()   # TemporaryDirectory removes its (now empty) path on exit
    return card


def checked(check: dict, method: str, category: str, runtime: str) -> dict:
    """`check` when within SCORE_RTOL / MAP_RTOL, else the UserError that stops the export."""
    if not check["ok"]:
        raise UserError(f"the exported {method} model for {category} disagrees on {runtime} with outputs/{method}/"
                        f"{category}.npz (score rel. diff {check['max_score_rel_diff']:.3g}, map diff "
                        f"{check.get('max_map_diff_rel_to_max', 0):.3g}); nothing written")
    return check


def differences(check: dict) -> str:
    """A check's differences in one phrase: 'score rel. diff X[, map Y]'."""
    out = f"score rel. diff {check['max_score_rel_diff']:.2e}"
    return out + (f", map {check['max_map_diff_rel_to_max']:.2e}" if "max_map_diff_rel_to_max" in check else "")


def export_openvino(onnx_path: Path, dest: Path) -> list[str]:
    try:
        import openvino as ov
    except ImportError:
        raise UserError("--format openvino needs the `openvino` package: pip install openvino") from None
    dest.mkdir(parents=True, exist_ok=True)
    # float32 weights: OpenVINO's default fp16 compression misses the 1e-4 check (docs/performance.md)
    ov.save_model(ov.convert_model(str(onnx_path)), str(dest / "model.xml"), compress_to_fp16=False)
    return [f"openvino/{f.name}" for f in sorted(dest.iterdir())]


def parser_export() -> argparse.ArgumentParser:
    """The command's argparse parser (its --help, and the usage `python -m anomaly_backbones` prints)."""
    from .scorers import EXPORTABLE

    ap = argparse.ArgumentParser(prog="python -m anomaly_backbones export",
                                 description="Export the workspace's backbone + method + calibrated threshold as one "
                                             "deployable ONNX model per category, with a model card.")
    ap.add_argument("--method", action="append", help=f"method(s) to export (default: every exportable one of "
                                                      f"`methods`: {', '.join(EXPORTABLE)})")
    ap.add_argument("--category", action="append", help="categories (default: all)")
    ap.add_argument("--out", default="models", help="output folder (default: models, dvc.yaml's artifacts)")
    ap.add_argument("--format", default="onnx", choices=("onnx", "openvino", "all"))
    ap.add_argument("--check-images", type=int, default=None, help="test images checked against the pipeline "
                                                                   "(default: all)")
    ap.add_argument("--repo", default=".", help="project root")
    return ap


def main_export(argv: list[str] | None = None) -> None:
    from ..pipeline.config import load_params
    from .scorers import EXPORTABLE, NOT_EXPORTED

    a = parser_export().parse_args(argv or [])
    root = Path(a.repo).resolve()
    p = load_params(root / "params.yaml")
    methods = a.method or [m for m in p["methods"] if m in EXPORTABLE]
    for m in methods:
        if m not in EXPORTABLE:
            raise UserError(f"method {m!r} cannot be exported: {NOT_EXPORTED.get(m, 'not a cache method')}")
    if not methods:
        raise UserError(f"none of `methods` ({p['methods']}) is exportable; exportable: {', '.join(EXPORTABLE)}")
    cats = a.category or [c["category"] for c in read_json(root / PREPARED / "categories.json")]
    formats = ("onnx", "openvino") if a.format == "all" else (a.format,)
    out = Path(a.out) if Path(a.out).is_absolute() else root / a.out
    for m in methods:
        for c in cats:
            card = export_one(root, p, m, c, out, formats, a.check_images)
            t = card["threshold"]["image"]
            ck = card["check_vs_pipeline"]
            ov = card.get("check_vs_pipeline_openvino")
            print(f"{m} {c}: {out / m / c / 'model.onnx'}; threshold {t['threshold']:.6g} (held-out false alarms "
                  f"{t['n_flagged']}/{t['n_held']}, 95 % CI [{t['fpr_lo']:.3f}, {t['fpr_hi']:.3f}], target "
                  f"{t['target_fpr']}); vs pipeline on {ck['images']} test images: {differences(ck)}"
                  + (f"; OpenVINO: {differences(ov)}" if ov else ""))
