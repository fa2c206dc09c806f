"""The pooled feature cache: which module is the last stage, the tail from the cached layers to
it (equal to the whole network), global average pooling and the pooled files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_backbones.backbones import FeatureExtractor, get_entry, load_backbone
from anomaly_backbones.errors import UserError
from anomaly_backbones.features import FeatureSet, FeatureWriter, PooledWriter, global_pool
from anomaly_backbones.pooling import Tail, last_stage


@pytest.mark.parametrize("name,last", [
    ("tf_efficientnet_lite0", "blocks.6"),        # timm: the last of blocks.0-6, not conv_head
    ("resnet18", "layer4"),                       # beside layer1-3: not avgpool, not fc
    ("vgg11", "features"),                        # the registry layer itself: avgpool and classifier follow
    ("densenet121", "features.norm5"),
    ("squeezenet1_0", "features"),                # its classifier is a 1x1 convolution, then a global pool
    ("shufflenet_v2_x0_5", "conv5"),
])
def test_last_stage_of_registry_backbones(name, last):
    bb = load_backbone(name, "random", 0)
    assert last_stage(bb.model, get_entry(name)["layers"]) == last


@pytest.mark.parametrize("name,layers,reads,engine", [
    ("tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"], "blocks.4", "eager"),
    ("tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"], "blocks.4", "onnx"),
    ("resnet18", ["layer1", "layer2", "layer3"], "layer3", "onnx"),
    ("resnet18", ["layer2", "layer1"], "layer2", "eager"),   # the deepest cached layer need not be listed last
    ("densenet121", ["features.denseblock1", "features.denseblock2", "features.denseblock3"], "features.denseblock3",
     "eager"),
])
def test_tail_from_the_cached_layers_equals_the_whole_network(name, layers, reads, engine):
    torch.manual_seed(0)
    bb = load_backbone(name, "random", 0)
    last = last_stage(bb.model, get_entry(name)["layers"])
    tail = Tail(bb.model, layers, last, name, 64, engine)
    x = torch.rand(11, 3, 64, 64) * 2 - 1   # ONNX Runtime: two calls (ORT_BATCH 8, then 3), joined in order
    want = FeatureExtractor(bb.model, [*layers, last])(x)
    got = tail({layer: want[layer] for layer in layers})
    assert tail.inputs == [reads] and tail.engine == engine
    tol = 1e-5 if engine == "eager" else 1e-3   # ONNX Runtime: ort_extractor's tolerance
    torch.testing.assert_close(got, want[last], rtol=0, atol=tol * float(want[last].abs().max()))
    assert tail.estimate_bytes(32) > tail.estimate_bytes(1) > 0


def test_tail_refuses_a_last_stage_that_reads_more_than_the_cached_layers():
    """The last stage adds the input back (a skip around the cached layer): no cut there."""
    class AddInput(torch.nn.Module):
        def forward(self, y, x):
            return y + x.mean(1, keepdim=True)

    class Skip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 3, padding=1), AddInput()

        def forward(self, x):
            return self.b(self.a(x), x)

    with pytest.raises(UserError, match="reads more than the cached layers"):
        Tail(Skip().eval(), ["a"], "b", "skip", 16)


def test_global_pool_and_the_pooled_files(tmp_path):
    rng = np.random.default_rng(0)
    maps = {"a": rng.normal(size=(5, 3, 4, 6)).astype(np.float32), "b": rng.normal(size=(5, 2, 2, 2)).astype(np.float32)}
    np.testing.assert_allclose(global_pool(torch.from_numpy(maps["a"])), maps["a"].mean((2, 3)), rtol=1e-6)
    w, pooled = FeatureWriter(tmp_path, {"layers": ["a"], "image_size": 8}), PooledWriter(tmp_path)
    for split in ("train", "test"):
        w.open(split, 5, {"a": (3, 4, 6)})
        pooled.open(split, 5, {"a": 3, "b": 2})
        for s in (slice(0, 2), slice(2, 5)):            # streamed in batches
            w.write(split, {"a": maps["a"][s]})
            pooled.write(split, {k: v[s] for k, v in maps.items()})
    w.meta.update(pooled=pooled.close(), last_stage="b")
    w.close()
    fs = FeatureSet(tmp_path, "test")
    assert fs.meta["pooled"] == {"a": 3, "b": 2} and fs.pooled("b").dtype == np.float32
    np.testing.assert_array_equal(fs.pooled("a"), global_pool(maps["a"]))
    with pytest.raises(UserError, match="'c' is not in the pooled feature cache"):
        fs.pooled("c")


def test_pooled_writer_refuses_non_finite_maps(tmp_path):
    pooled = PooledWriter(tmp_path)
    pooled.open("train", 1, {"a": 2})
    with pytest.raises(UserError, match="NaN/Inf"):
        pooled.write("train", {"a": np.full((1, 2, 2, 2), np.inf, np.float32)})
