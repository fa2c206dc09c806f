"""The `device` param and the extract path on a device (anomaly_backbones.device, backbones.extractor):
bad devices are one-line errors naming the param, CPU moves are no-ops, float32 features on the
CPU are a plain forward pass's bits, bfloat16 stays near float32, the engines a device or a
precision rule out are refused with the fix, and the stages stop on `device: cuda` without a GPU.
The extractor tests run on every device torch sees (cuda: skipped where there is none) through
conftest's `device` fixture, which makes the device deterministic itself (use_device: TF32 off),
so their tolerances hold whatever ran before them in the process."""
from __future__ import annotations

import runpy
import shutil
import sys

import numpy as np
import pytest
import torch
import yaml

from anomaly_backbones.backbones import load_backbone, normalize
from anomaly_backbones.backbones.extractor import extract_bytes
from anomaly_backbones.backbones.ort_extractor import make_extractor
from anomaly_backbones.device import autocast, resolve_device, to_device
from anomaly_backbones.errors import UserError
from anomaly_backbones.params import set_params
from anomaly_backbones.pipeline.config import validate
from anomaly_backbones.pooling import Tail, last_stage
from conftest import ROOT

NO_GPU = not torch.cuda.is_available()
LAYERS = ["blocks.1", "blocks.2", "blocks.4"]
SIZE = 64
BF16_DRIFT = 0.1   # largest relative L2 difference of a bfloat16 layer from float32 (lite0 measures 0.02-0.04)


def _images(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _lite0():
    """A fresh model each time: make_extractor moves the caller's model to the device."""
    return load_backbone("tf_efficientnet_lite0", "imagenet", 1024)


def _plain_forward(model, x: np.ndarray, mean, std) -> dict[str, torch.Tensor]:
    """LAYERS of a whole forward pass on the CPU, by hooks: no extractor involved."""
    got = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: got.setdefault(n, o.clone())) for n in LAYERS]
    try:
        with torch.inference_mode():
            model.eval()(normalize(torch.from_numpy(x).permute(0, 3, 1, 2), mean, std))
    finally:
        for h in hooks:
            h.remove()
    return got


# ------------------------------------------------------------------------------------ device.py

@pytest.mark.parametrize("spec,needle", [("gpu", "not a device"), ("cuda:x", "not a device"), ("CUDA", "not a device"),
                                         ("cuda:99", "cuda:99")])
def test_a_bad_device_is_one_line_naming_the_param(spec, needle):
    with pytest.raises(UserError) as e:
        resolve_device(spec)
    msg = str(e.value)
    assert "`device`" in msg and needle in msg and "\n" not in msg


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present")
def test_cuda_without_a_gpu_says_how_to_fix_it():
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(UserError, match=r"sees no GPU.*`device: auto` or `cpu`"):
            resolve_device(spec)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


def test_the_params_schema_rejects_a_misspelt_device():
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["device"] = "gpu"
    with pytest.raises(UserError, match="`device`.*auto | cpu | cuda | cuda:N"):
        validate(p)
    p["device"] = "cuda:1"   # spelling only: whether that GPU exists is resolve_device's
    assert validate(p)["device"] == "cuda:1"


def test_to_device_on_the_cpu_is_the_same_memory():
    t = torch.arange(6.0)
    assert to_device(t, torch.device("cpu")) is t
    a = np.arange(6, dtype=np.float32)
    assert to_device(a, torch.device("cpu")).data_ptr() == a.ctypes.data
    assert to_device(a, torch.device("cpu"), torch.float64).dtype == torch.float64


def test_reduced_precision_the_cpu_lacks_is_a_user_error():
    with pytest.raises(UserError, match="float16 needs a GPU"):
        autocast(torch.device("cpu"), "float16")
    with pytest.raises(UserError, match="`extract.precision`"):
        autocast(torch.device("cpu"), "int8")
    with pytest.raises(UserError, match="`extract.precision` = float16 needs a GPU"):
        make_extractor(_lite0().model, LAYERS, "tf_efficientnet_lite0", "eager", SIZE, (0.5,) * 3, (0.25,) * 3,
                       precision="float16")


# ------------------------------------------------------------------------------ the extractor

def test_float32_features_are_a_plain_forward_pass(device):
    """CPU: the very bits of a forward pass of the unmoved model (nothing added on the way);
    GPU: within float32 rounding of it (TF32 off)."""
    bb, ref_bb, x = _lite0(), _lite0(), _images()
    want = _plain_forward(ref_bb.model, x, ref_bb.mean, ref_bb.std)
    ext, engine = make_extractor(bb.model, LAYERS, bb.name, "eager" if device.type == "cpu" else "auto", SIZE,
                                 bb.mean, bb.std, device=device)
    assert engine == "eager" and next(bb.model.parameters()).device.type == device.type
    got = ext.pixels(x)
    for layer in LAYERS:
        assert got[layer].device.type == "cpu" and got[layer].dtype == torch.float32
        if device.type == "cpu":
            assert torch.equal(got[layer], want[layer]), layer
        else:
            scale = float(want[layer].abs().max())
            assert float((got[layer] - want[layer]).abs().max()) <= 1e-4 * scale, layer


def test_stream_gives_each_batch_the_features_of_a_plain_forward_pass(device):
    """Batches in order, covering every image once, each the features of a plain forward pass of
    an unmoved model on that batch (hooks, no extractor: the reference), whether or not the next
    batch is queued ahead: the same bits on the CPU, within float32 rounding on a GPU."""
    dev = device
    bb, ref_bb, x = _lite0(), _lite0(), _images(7)
    ext, _ = make_extractor(bb.model, LAYERS, bb.name, "eager", SIZE, bb.mean, bb.std, device=dev)
    for ahead in (0, 1):
        out = list(ext.stream(x, 3, ahead=ahead))
        assert [r for r, _, _ in out] == [slice(0, 3), slice(3, 6), slice(6, 7)]
        assert all(s >= 0 for _, _, s in out)
        for rows, feats, _ in out:
            want = _plain_forward(ref_bb.model, x[rows], ref_bb.mean, ref_bb.std)
            for k in LAYERS:
                if dev.type == "cpu":
                    assert torch.equal(feats[k], want[k]), (ahead, rows, k)
                else:
                    scale = float(want[k].abs().max())
                    assert float((feats[k] - want[k]).abs().max()) <= 1e-4 * scale, (ahead, rows, k)


def test_bfloat16_runs_eager_and_stays_near_float32(device):
    x = _images()
    bb32 = _lite0()
    f32 = make_extractor(bb32.model, LAYERS, bb32.name, "eager", SIZE, bb32.mean, bb32.std, device=device)[0].pixels(x)
    bb = _lite0()
    ext, engine = make_extractor(bb.model, LAYERS, bb.name, "auto", SIZE, bb.mean, bb.std, device=device,
                                 precision="bfloat16")
    assert engine == "eager"   # ONNX Runtime has no autocast: auto means eager
    got = ext.pixels(x)
    for layer in LAYERS:
        assert got[layer].dtype == torch.float32 and got[layer].device.type == "cpu"
        rel = float((got[layer] - f32[layer]).norm() / f32[layer].norm())
        assert 0 < rel < BF16_DRIFT, (layer, rel)   # 0 would mean autocast did nothing


def test_engines_a_device_or_a_precision_rules_out_are_refused_with_the_fix():
    bb = _lite0()
    with pytest.raises(UserError) as e:   # refused before the model moves: no GPU needed
        make_extractor(bb.model, LAYERS, bb.name, "onnx", SIZE, bb.mean, bb.std, device=torch.device("cuda:0"))
    assert "`extract.engine`" in str(e.value) and "`device: cpu`" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError) as e:
        make_extractor(bb.model, LAYERS, bb.name, "onnx", SIZE, bb.mean, bb.std, precision="bfloat16")
    assert "`extract.engine`" in str(e.value) and "`extract.precision: float32`" in str(e.value)
    assert next(bb.model.parameters()).device.type == "cpu"


def test_memory_estimates_split_host_and_device(device):
    """CPU: the host RSS estimate alone, as before devices; GPU: the activations move from the
    host estimate to the device one, which holds the weights and grows with the batch."""
    bb = _lite0()
    ext, _ = make_extractor(bb.model, LAYERS, bb.name, "eager", SIZE, bb.mean, bb.std, device=device)
    cpu = extract_bytes(32, SIZE, ext.weight_bytes(), *ext.probe(SIZE), 4)
    if device.type == "cpu":
        # the host estimate covers what a batch of 32 really holds (measured on the tensors):
        # the weights, the float32 input and the features it returns
        feats = ext.pixels(_images(32))
        held = (sum(p.numel() * p.element_size() for p in bb.model.parameters()) + 32 * 3 * SIZE * SIZE * 4
                + sum(f.numel() * f.element_size() for f in feats.values()))
        assert ext.device_bytes(32, SIZE) is None and ext.estimate_bytes(32, SIZE) > held
        assert ext.estimate_bytes(64, SIZE) > ext.estimate_bytes(32, SIZE)
    else:
        assert ext.weight_bytes() < ext.device_bytes(1, SIZE) < ext.device_bytes(32, SIZE)
        assert ext.estimate_bytes(32, SIZE) < cpu


def test_the_tail_runs_on_the_trunks_device(device):
    """The pooled last stage from the extractor's cached layers: on the device the extractor moved
    the model to, CPU tensors in and out, equal to the deeper trunk's last stage."""
    bb, x = _lite0(), _images(2)
    ext, _ = make_extractor(bb.model, LAYERS, bb.name, "eager", SIZE, bb.mean, bb.std, device=device)
    last = last_stage(bb.model, LAYERS)
    tail = Tail(bb.model, LAYERS, last, bb.name, SIZE, "eager")
    assert tail.device.type == device.type and tail.engine == "eager"
    got = tail(ext.pixels(x))
    deeper = make_extractor(_lite0().model, [*LAYERS, last], bb.name, "eager", SIZE, bb.mean, bb.std)[0].pixels(x)
    assert got.device.type == "cpu" and got.dtype == torch.float32
    err = float((got - deeper[last]).abs().max()) / float(deeper[last].abs().max())
    assert err <= 1e-4, err


# ---------------------------------------------------------------------------------- the stages

@pytest.mark.skipif(not NO_GPU, reason="a GPU is present")
@pytest.mark.parametrize("stage,args", [("03_extract.py", []), ("04_fit.py", ["padim"]), ("04_train.py", ["panda"])])
def test_a_stage_with_device_cuda_and_no_gpu_stops_with_one_line(tmp_path, monkeypatch, capsys, stage, args):
    """Through the stage runner (exit 2, one line on stderr), before any work or output."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path / "params.yaml", device="cuda")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [stage, *args])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "stages" / stage), run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "`device` = 'cuda'" in err and "sees no GPU" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
