"""bench/gpu.py's report: end-to-end seconds and ratios, the targets, the Markdown table.

Targets (met / missed; those that depend on the data's size are judged at MVTec AD's size only:
scale 1, crop 224, all 15 categories, else "n/a" with the measured figure):
- per backbone: extract's images/s (ext.stream and the cache writes) >= 80% of the forward pass's;
- PaDiM on wide_resnet50_2 (layer1-3, d=550, 56x56 grid): fit + predict of all categories < 60 s;
- SPADE (exact k-NN) on wide_resnet50_2: predict < 50 ms per test image;
- wide_resnet50_2 with the four methods: end to end < 10 minutes.
A method that failed on a category (the JSON's "errors") leaves the size targets unjudged.

    python bench/gpu_report.py gpu.json    # the table and the errors, from bench/gpu.py's JSON alone
"""
from __future__ import annotations

import json
import sys

WRN = "wide_resnet50_2"
FOUR = ("padim", "spade", "patchcore", "cflow")


def summarize(result: dict, scale: float, crop: int) -> None:
    """Fill each backbone's per-method end-to-end seconds and ratios, and the targets."""
    shared = result["generate_s"] + result["prepare_s"]
    targets = result["targets"] = []
    off_size = None if scale == 1 and crop == 224 else f"scale {scale:g}, crop {crop}"

    def target(what, measured, limit, ok, unjudged=None):
        verdict = f"n/a ({unjudged}: judged at MVTec AD's size)" if unjudged else "met" if ok else "missed"
        targets.append({"target": what, "measured": measured, "limit": limit, "verdict": verdict})

    for name, b in result["backbones"].items():
        done = len(b["categories"])
        fwd_s = b["forward_s"] = b["images"] / b["forward_ips"]
        b["extract_ips"] = b["images"] / b["extract_s"] if b["extract_s"] else None
        base = shared + b["load_s"] + b["extract_s"]
        for m in b["methods"].values():
            m["e2e_s"] = base + m["fit_s"] + m["predict_s"] + m["metrics_s"]
            m["ratio"] = m["e2e_s"] / fwd_s if fwd_s else None
        b["e2e_s"] = base + sum(m["fit_s"] + m["predict_s"] + m["metrics_s"] for m in b["methods"].values())
        b["ratio"] = b["e2e_s"] / fwd_s if fwd_s else None
        if b["extract_ips"]:
            share = b["extract_ips"] / b["forward_ips"]
            target(f"{name}: extract images/s vs the forward pass's", f"{100 * share:.0f}%", ">= 80%", share >= 0.8)
        if name != WRN or not done:
            continue
        unjudged = off_size or (None if done == len(result["categories"]) else f"{done} of 15 categories")

        def failed(m):   # a method's own failures leave its targets unjudged
            n = len(b["methods"][m].get("failed", []))
            return unjudged or (f"{m} failed on {n} categories" if n else None)

        if "padim" in b["methods"] and b["methods"]["padim"]["test_images"]:
            m = b["methods"]["padim"]
            grid, s = tuple(b["shapes"][b["layers"][0]][1:]), m["fit_s"] + m["predict_s"]
            target(f"PaDiM {WRN} d={m['params']['d']}, {grid[0]}x{grid[1]} grid: fit + predict, all categories",
                   f"{s:.1f} s", "< 60 s", s < 60 and m["params"]["d"] == 550 and grid == (56, 56), failed("padim"))
        if "spade" in b["methods"] and b["methods"]["spade"]["test_images"]:
            m = b["methods"]["spade"]
            ms = 1000 * m["predict_s"] / m["test_images"]
            target(f"SPADE (exact) {WRN}: predict per test image", f"{ms:.1f} ms", "< 50 ms", ms < 50, failed("spade"))
        if set(FOUR) <= set(b["methods"]):
            target(f"{WRN}, the four methods: end to end", f"{b['e2e_s']:.0f} s", "< 600 s", b["e2e_s"] < 600,
                   unjudged or next(filter(None, map(failed, FOUR)), None))


def fmt(v, spec=".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def table(result: dict) -> str:
    """The Markdown table: a row per backbone and method (and "all" methods), then the targets."""
    mem = "peak GPU MiB" if result["device_type"] == "cuda" else "peak RSS MiB"
    head = ["backbone (init, engine)", "method", "img/s forward", "img/s extract", "generate s", "prepare/load s",
            "extract s", "fit s", "predict s", "metrics s", mem, "end to end s", "end to end / forward"]
    lines = [f"device: {result['device']} ({result['device_type']}), {result['n_images']} images "
             f"({result['n_train']} train, {result['n_test']} test) in {len(result['categories'])} categories, "
             f"scale {result['args']['scale']:g}, crop {result['args']['crop']}, torch {result['torch']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, b in result["backbones"].items():
        rows = [(m + (f" (failed on {len(v['failed'])})" if v.get("failed") else ""), v["fit_s"], v["predict_s"],
                 v["metrics_s"], v["peak_bytes"], v["e2e_s"], v["ratio"]) for m, v in b["methods"].items()]
        if len(rows) > 1:   # every method: the largest peak, extract's included
            rows.append(("all", *(sum(r[i] for r in rows) for i in (1, 2, 3)),
                         max(b["extract_peak_bytes"], *(r[4] for r in rows)), b["e2e_s"], b["ratio"]))
        base = result["generate_s"] + result["prepare_s"] + b["load_s"] + b["extract_s"]
        rows.insert(0, ("(extract)", None, None, None, b["extract_peak_bytes"], base,
                        base / b["forward_s"] if b["forward_s"] else None))
        if not b["categories"]:   # the budget was spent before it: the forward pass only
            rows = [("(forward only: budget spent)", None, None, None, 0, None, None)]
        done = len(b["categories"])
        label = f"{name} ({b['init']}, {b['engine']}" + (")" if done == len(result["categories"]) else
                                                        f", {done} categories)")
        for m, fit, pred, met, pk, e2e, ratio in rows:
            cells = [label, m, fmt(b["forward_ips"]), fmt(b["extract_ips"]), fmt(result["generate_s"]),
                     fmt(result["prepare_s"] + b["load_s"]), fmt(b["extract_s"]), fmt(fit), fmt(pred), fmt(met),
                     f"{pk / 2**20:.0f}", fmt(e2e), fmt(ratio, ".2f")]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | limit | verdict |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['limit']} | {t['verdict']} |" for t in result["targets"]]
    errors = result.get("errors", [])
    lines += ["", f"errors: {len(errors)}"] + [f"- {e['backbone']} {e['category'] or '-'} {e['step']}: {e['error']} "
                                               f"({e['at']})" for e in errors]
    return "\n".join(lines)


def main(argv=None) -> None:
    """Print the table of a bench/gpu.py JSON (complete, or the part a killed run left)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python bench/gpu_report.py gpu.json")
    result = json.loads(open(args[0]).read())
    summarize(result, result["args"]["scale"], result["args"]["crop"])
    print(table(result))


if __name__ == "__main__":
    main()
