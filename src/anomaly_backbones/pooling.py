"""The backbone's last stage for the pooled feature cache (image-level methods: OC-SVM, SVDD, DN2).

    last = last_stage(model, layers)                           # "layer4" (ResNet), "blocks.6" (EfficientNet)
    tail = Tail(model, cache_layers, last, name, size, engine) # tail(feats) -> (B, C, h, w) map of `last`

Why a tail: the extract stage runs the backbone only as deep as the cached layers (what the
pixel-level methods read, and what `ms_per_image` times). The image-level methods read the last
stage, globally average-pooled (as DN2 and PANDA: ResNet layer4). Running the trunk deeper
would charge every method for layers only these read; instead `Tail` runs the rest of the
network, from the cached layers' outputs of each batch to the last stage: the trunk's torch.fx
graph cut after the cached layers, in ONNX Runtime when the trunk runs there (exported and
checked as the trunk is), else in eager PyTorch. The cached maps and their timing stay exactly
those of the trunk alone; the tail's time is recorded apart.

Device: the tail runs where the model's parameters are (the extractor moved them to `device`),
in eager PyTorch under the trunk's `extract.precision`; it takes and returns CPU tensors (the
cached maps, the pooled writer's input), so on a GPU it copies its input there and its output back.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from .device import autocast, model_device, to_device
from .errors import UserError

WORKING = 4       # activations alive at once in the tail, in units of its largest (as extractor.WORKING)
PROBE_SIZE = 224  # px of the forward pass that finds the last stage
CHECK_TOL = 1e-5  # largest |tail - trunk| on the check images, relative to the largest |value|


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def last_stage(model: nn.Module, layers: list[str]) -> str:
    """The backbone's last stage: among the modules beside the deepest of `layers` (the children
    of its parent module), the last to run in a forward pass of a blank image that outputs a
    (B, C, h, w) map with more than one position and is not a pooling layer. Pass the registry's
    layers (stage ends): for ResNet layer1-3 it is layer4, for timm's EfficientNet blocks.1/2/4
    blocks.6, for VGG's `features` itself, for DenseNet's features.denseblock1-3 features.norm5;
    a classifier beside them (2-D output, or 1x1 such as SqueezeNet's convolutional one) or a
    global pool is never chosen. The pass is at PROBE_SIZE px, where every stage of these
    networks has 5x5 positions or more (the name does not depend on the input size).

    Why not the deepest 4-D output of the whole model: some classifiers are convolutions
    (SqueezeNet's ends in a 1x1 convolution to the 1000 classes, then a global pool)."""
    modules = dict(model.named_modules())
    order: list[str] = []            # modules in the order their forward calls return
    maps: set[str] = set()
    watched = {n: modules[n] for n in layers if n in modules}
    for p in {_parent(n) for n in watched}:
        watched.update({f"{p}.{c}" if p else c: m for c, m in modules[p].named_children()})

    def hook(name):
        def record(module, _inputs, output):
            order.append(name)
            if (isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1
                    and "Pool" not in type(module).__name__):
                maps.add(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in watched.items()]
    try:
        with torch.inference_mode():
            model.eval()(to_device(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE), model_device(model)))
    finally:
        for h in handles:
            h.remove()
    ran = [n for n in layers if n in order]
    if not ran:
        raise UserError(f"none of the layers {layers} ran in a forward pass of the backbone; fix `layers`")
    deepest = max(ran, key=lambda n: max(i for i, o in enumerate(order) if o == n))
    siblings = {n for n in watched if _parent(n) == _parent(deepest)}
    last = [n for n in order if n in siblings and n in maps]
    return last[-1] if last else deepest


class Tail:
    """The network from the cached layers' outputs to the last stage's map: the trunk's fx graph
    (backbones.ort_extractor.trunk, the graph the ONNX export also traces) keeping only the nodes
    between them. `inputs`: the cached layers it reads (usually the deepest alone).

    Checked on two random images against the whole trunk; a backbone that fx cannot trace, or
    whose last stage reads something besides the cached layers (a skip from the stem), is a
    UserError (the caller leaves the last stage out of the pooled cache).

    Runs on the model's device (model_device) under `precision` (the extractor's; the check
    itself is in float32); the ONNX Runtime engine only on the CPU in float32, as the trunk."""

    def __init__(self, model: nn.Module, cache_layers: list[str], last: str, name: str, image_size: int,
                 engine: str = "eager", precision: str = "float32"):
        from .backbones.ort_extractor import trunk

        self.last = last
        self.device, self.precision = model_device(model), "float32"
        gm = trunk(model, [*cache_layers, last], name)
        outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        cut = {outputs[layer]: layer for layer in cache_layers}
        needed, reads, stack = set(), set(), [outputs[last]]
        while stack:
            node = stack.pop()
            if node in cut:
                reads.add(cut[node])
            elif node not in needed:
                if node.op == "placeholder":
                    raise UserError(f"the last stage {last!r} of {name!r} reads more than the cached layers "
                                    f"{cache_layers}")
                needed.add(node)
                stack.extend(node.all_input_nodes)
        self.inputs = [layer for layer in cache_layers if layer in reads]
        graph, env = fx.Graph(), {}
        for layer in self.inputs:
            env[outputs[layer]] = graph.placeholder(f"in{len(env)}")
        for node in gm.graph.nodes:
            if node in needed:
                env[node] = graph.node_copy(node, lambda a: env[a])
        graph.output(env[outputs[last]])
        self.module = fx.GraphModule(gm, graph).eval()
        self.session = None
        self.largest, example = self._check(gm, image_size, name)
        self.engine = "eager"
        self.precision = precision
        if engine != "eager" and self.device.type == "cpu" and precision == "float32":
            try:
                self._export(example, name)
            except UserError as e:
                print(f"note: the tail to the last stage of {name!r} runs in eager PyTorch: {e}")

    def __call__(self, feats: dict[str, torch.Tensor], images=None) -> torch.Tensor:
        """{cached layer: (B, C, h, w) CPU tensor} -> the last stage's (B, C', h', w') float32 CPU map
        (on the CPU in float32: no copy or cast anywhere, the module's own output). `images`: unused
        (ForwardTail's)."""
        if self.session is not None:   # calls of ORT_BATCH images, as the trunk's: the arena grows with a call
            from .backbones.ort_extractor import run_in_calls

            feeds = {f"in{i}": np.ascontiguousarray(feats[layer], np.float32) for i, layer in enumerate(self.inputs)}
            return torch.from_numpy(run_in_calls(self.session, feeds, [self.out_shape])[0])
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self.module(*[to_device(feats[layer], self.device).float() for layer in self.inputs])
        return out.float().cpu()

    def _export(self, example: list[torch.Tensor], name: str) -> None:
        """Run the tail in ONNX Runtime, as the extract stage runs the trunk (backbones.ort_extractor:
        the same exporter and session settings; about 2x faster than eager PyTorch on 2 cores),
        checked against eager PyTorch on the check images within ort_extractor.CHECK_TOL."""
        import tempfile
        import warnings
        from pathlib import Path

        from .backbones.ort_extractor import CHECK_TOL as ORT_TOL, ort_session
        from .resources import usable_cpus

        names = [f"in{i}" for i in range(len(self.inputs))]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "tail.onnx"
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(self.module, tuple(example), str(path), dynamo=False, input_names=names,
                                      output_names=["last"], dynamic_axes={n: {0: "batch"} for n in [*names, "last"]})
                with torch.inference_mode():
                    want = self.module(*example)
                self.session, self.out_shape = ort_session(path, usable_cpus()), tuple(want.shape[1:])
                got = self({layer: x for layer, x in zip(self.inputs, example)})
            except Exception as e:  # noqa: BLE001 - the exporter and ORT raise many types
                self.session = None
                raise UserError(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}") from None
        err = float((got - want).abs().max()) / (float(want.abs().max()) or 1.0)
        if got.shape != want.shape or not err <= ORT_TOL:
            self.session = None
            raise UserError(f"its ONNX export disagrees with eager PyTorch (relative difference {err:.3g})")
        self.engine = "onnx"

    def _check(self, gm: fx.GraphModule, image_size: int, name: str) -> tuple[int, list[torch.Tensor]]:
        """The tail on the trunk's own cached-layer outputs must give the trunk's last stage (two
        seeded random images); returns the largest activation in the tail, in elements per image,
        and the tail's inputs for those images."""
        g = torch.Generator().manual_seed(0)
        x = to_device(torch.rand(2, 3, image_size, image_size, generator=g) * 2 - 1, self.device)
        largest = [0]

        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                largest[0] = max(largest[0], output[0].numel())

        with torch.inference_mode():
            want = gm(x)
            handles = [m.register_forward_hook(hook) for m in self.module.modules() if next(m.children(), None) is None]
            try:
                got = self({layer: want[layer].clone() for layer in self.inputs})
            finally:
                for h in handles:
                    h.remove()
        ref = want[self.last].cpu()
        err = float((got - ref).abs().max()) / (float(ref.abs().max()) or 1.0)
        if got.shape != ref.shape or not err <= CHECK_TOL:
            raise UserError(f"the network from {self.inputs} to the last stage {self.last!r} of {name!r} disagrees "
                            f"with the whole trunk (relative difference {err:.3g})")
        return max(largest[0], int(np.prod(ref.shape[1:]))), [want[layer] for layer in self.inputs]

    def estimate_bytes(self, batch_size: int) -> float:
        """Peak bytes the tail adds to a batch, on its device: WORKING x its largest activation
        (float32; an upper bound of ONNX Runtime's arena, ort_extractor.ORT_ARENA = 4 largest
        activations of a call of ORT_BATCH images, and of the activations under autocast)."""
        from .backbones.ort_extractor import ORT_BATCH

        images = min(batch_size, ORT_BATCH) if self.session is not None else batch_size
        return 4.0 * WORKING * images * self.largest


class ForwardTail:
    """The last stage from a second forward pass of the network on the images, where the cached
    maps do not determine it: a ViT's later blocks read the class (and register) tokens, which
    its maps on the patch grid drop (backbones/tokens.py). Same call as Tail, plus the batch's
    uint8 images; eager PyTorch on the model's device under `precision`. Costs a forward pass to
    the last block, recorded in `pooled_ms_per_image` as the Tail's time is."""

    engine = "eager (second pass)"

    def __init__(self, model: nn.Module, last: str, mean, std, image_size: int, precision: str = "float32"):
        from .backbones.extractor import FeatureExtractor

        self.last, self.inputs, self.image_size = last, [], image_size
        self.ext = FeatureExtractor(model, [last], mean, std, model_device(model), precision)

    def __call__(self, feats: dict[str, torch.Tensor], images: np.ndarray) -> torch.Tensor:
        return self.ext.pixels(images)[self.last]

    def estimate_bytes(self, batch_size: int) -> float:
        from .resources import BASELINE_BYTES

        return self.ext.estimate_bytes(batch_size, self.image_size) - BASELINE_BYTES
