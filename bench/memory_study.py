"""The memory guards' estimates for SPADE, PatchCore and CFLOW-AD at MVTec AD's largest category,
for the study's largest backbones (#29 item 3): which would need more than 8 GiB.

The shapes are real (each backbone built with random init and run once on a blank 224 px image,
its default layers and what each method adds, as the extract stage caches them); the sizes are
MVTec AD's largest: 391 training images (hazelnut) and 167 test images (pill), 224 px. Only the
estimates are computed (what the guards check before a method starts), from each method's own
`fit_bytes` / `predict_bytes` with the params of params.yaml resolved as the pipeline resolves
them; bench/memory.py measures estimate against peak on the magnetic-tile shapes, and
bench/padim_memory.py does PaDiM at these sizes.

    python bench/memory_study.py [--backbones densenet161,wide_resnet101_2] [--n-train 391] [--n-test 167]
"""
from __future__ import annotations

import argparse

import torch

LARGEST = ("wide_resnet101_2,resnet152,densenet161,densenet201,regnet_y_32gf,regnet_x_32gf,efficientnet_b7,"
           "convnext_large,resnext101_32x8d,vit_large_patch16_224,vit_large_patch14_dinov2,swin_base_patch4_window7_224")
GIB = 2.0 ** 30


def shapes_of(name: str, layers: list[str]) -> dict[str, tuple[int, int, int]]:
    from anomaly_backbones.backbones import FeatureExtractor, load_backbone

    bb = load_backbone(name, "random", 0)
    feats = FeatureExtractor(bb.model, layers, bb.mean, bb.std).pixels(torch.zeros(1, 224, 224, 3, dtype=torch.uint8).numpy())
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}


def study_setup(name: str) -> tuple[dict, dict, dict]:
    """(params.yaml's params for `name`, {layer: (C, h, w)} of its cached layers, the params resolved
    for those shapes), as the pipeline resolves them."""
    from anomaly_backbones.pipeline.config import load_params, resolve

    p = load_params()
    p["backbone"] = name
    shapes = shapes_of(name, resolve(p)["cache_layers"])
    return p, shapes, resolve(p, shapes)


def estimates(name: str, n_train: int, n_test: int) -> dict[str, float]:
    from anomaly_backbones.methods import get_method

    p, shapes, r = study_setup(name)
    out = {}
    spade = get_method("spade")(r["spade"], r["layers"], p["seed"])
    out["spade predict"] = spade.predict_bytes(shapes, n_test, n_train, 224)
    pc = get_method("patchcore")(r["patchcore"], r["patchcore"]["layers"], p["seed"])
    out["patchcore fit"] = pc.fit_bytes(shapes, n_train)
    out["patchcore predict"] = pc.predict_bytes(shapes, n_test, pc.bank_rows(shapes, n_train), 224)
    cflow = get_method("cflow")(r["cflow"], r["layers"], p["seed"])
    out["cflow fit"] = cflow.fit_bytes(shapes)
    out["cflow predict"] = cflow.predict_bytes(shapes, n_test, 224)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbones", default=LARGEST)
    ap.add_argument("--n-train", type=int, default=391)
    ap.add_argument("--n-test", type=int, default=167)
    a = ap.parse_args()
    cols = ["spade predict", "patchcore fit", "patchcore predict", "cflow fit", "cflow predict"]
    print(f"estimates in GiB, {a.n_train} training / {a.n_test} test images of 224 px; * above 8 GiB")
    print("| backbone | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in a.backbones.split(","):
        try:
            e = estimates(name, a.n_train, a.n_test)
            cells = [f"{e[c] / GIB:.2f}{' *' if e[c] > 8 * GIB else ''}" for c in cols]
        except Exception as x:  # noqa: BLE001 - a row per backbone, whatever fails
            cells = [f"{type(x).__name__}: {str(x).splitlines()[0][:80]}"] + [""] * (len(cols) - 1)
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
