"""The extract stage's engines: ONNX Runtime gives eager PyTorch's features, `auto` falls back to
eager for a backbone that does not trace (and says so), `onnx` then stops with the fix, and an
export that computes something else is caught before it fills the cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from anomaly_backbones.backbones import FeatureExtractor, load_backbone, normalize, resolve_layers
from anomaly_backbones.backbones.ort_extractor import OnnxExtractor, make_extractor
from anomaly_backbones.errors import UserError


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8, as the prepared images the extract stage reads."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.mark.parametrize("name,layers", [("tf_efficientnet_lite0", "auto"),        # TF "same" padding
                                         ("resnet18", ["layer1", "layer2", "layer3"])])
def test_onnx_features_equal_eager_for_every_batch_size(name, layers):
    bb = load_backbone(name, "imagenet" if name.startswith("tf_") else "random", 1024)
    layers = resolve_layers(name, layers)
    ext, engine = make_extractor(bb.model, layers, bb.name, "onnx", 64, bb.mean, bb.std)
    assert engine == "onnx" and isinstance(ext, OnnxExtractor)
    eager = FeatureExtractor(bb.model, layers)
    for n in (1, 5):                                    # the batch axis is dynamic
        x = _images(n, 64, seed=n)                      # the graph normalizes as `normalize` does
        want = eager(normalize(torch.from_numpy(x).permute(0, 3, 1, 2), bb.mean, bb.std))
        got = ext.pixels(x)
        assert list(got) == layers
        for layer in layers:
            assert got[layer].shape == want[layer].shape and got[layer].dtype == torch.float32
            scale = float(want[layer].abs().max())
            assert float((got[layer] - want[layer]).abs().max()) <= 1e-4 * scale, layer


class _Branchy(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x    # data-dependent Python control flow: fx cannot trace it


def _toy(mid: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), mid,
                         nn.Conv2d(4, 4, 3, stride=2, padding=1)).eval()


def test_auto_falls_back_to_eager_and_says_so(capsys):
    model = _toy(_Branchy())
    ext, engine = make_extractor(model, ["0", "2"], "toynet", "auto", 16, MEAN, STD)
    assert engine == "eager" and isinstance(ext, FeatureExtractor)
    assert "note: extracting toynet with eager PyTorch" in capsys.readouterr().out
    assert ext.pixels(_images(1, 16))["2"].shape == (1, 4, 4, 4)
    with pytest.raises(UserError, match="toynet.*cannot be traced.*extract.engine=eager"):
        make_extractor(model, ["0", "2"], "toynet", "onnx", 16, MEAN, STD)


def test_traceable_toy_runs_on_onnx_with_auto():
    ext, engine = make_extractor(_toy(nn.ReLU()), ["0", "2"], "toynet", "auto", 16, MEAN, STD)
    assert engine == "onnx"
    x = _images(3, 16)
    want = FeatureExtractor(_toy(nn.ReLU()), ["0", "2"], MEAN, STD).pixels(x)["2"]
    assert torch.allclose(ext.pixels(x)["2"], want, atol=1e-5)


def test_an_export_that_disagrees_is_refused():
    ext, _ = make_extractor(_toy(nn.ReLU()), ["0", "2"], "toynet", "onnx", 16, MEAN, STD)
    off = _toy(nn.ReLU())
    with torch.no_grad():
        off[2].weight.mul_(1.1)                          # layer "2" computes something else, "0" the same
    ext.session = make_extractor(off, ["0", "2"], "toynet", "onnx", 16, MEAN, STD)[0].session
    with pytest.raises(UserError, match="ONNX export of backbone 'toynet' disagrees .* layer '2'"):
        ext.check("toynet", 16)


def test_unknown_engine_and_unknown_layer_are_user_errors():
    with pytest.raises(UserError, match="extract.engine.*'tensorrt'.*auto, onnx, eager"):
        make_extractor(_toy(nn.ReLU()), ["0"], "toynet", "tensorrt", 16, MEAN, STD)
    with pytest.raises(UserError, match="not found in the backbone"):
        make_extractor(_toy(nn.ReLU()), ["7"], "toynet", "onnx", 16, MEAN, STD)
