"""IBN-Net, variant a (Pan, Luo, Shi, Tang: "Two at Once: Enhancing Learning and Generalization
Capacities via IBN-Net", ECCV 2018), which neither timm nor torchvision ships.

IBN-a: in every bottleneck of layer1-layer3 the BatchNorm after the first 1x1 conv is replaced by an
IBN layer that normalizes the first half of the channels with InstanceNorm (affine) and the rest with
BatchNorm; layer4 stays plain. Module and parameter names follow the official implementation
(XingangPan/IBN-Net, `ibnnet/`), so the official ImageNet release checkpoints load with strict=True:

    conv1, bn1, layer{1..4}.{i}.{conv1, bn1[.IN, .BN], conv2, bn2, conv3, bn3, downsample.{0,1}[, se.fc.{0,2}]}, fc

Pooling before `fc` is adaptive (the official code uses AvgPool2d(7), i.e. 224 px only); it has no
parameters, so checkpoints are unaffected.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["IBN", "ResNetIBN", "resnet50_ibn_a", "resnet101_ibn_a", "resnext101_ibn_a", "se_resnet101_ibn_a",
           "MODELS"]


class IBN(nn.Module):
    """InstanceNorm on the first `int(planes * ratio)` channels, BatchNorm on the rest."""

    def __init__(self, planes: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, :self.half].contiguous(), x[:, self.half:].contiguous()
        return torch.cat((self.IN(a), self.BN(b)), dim=1)


class SELayer(nn.Module):
    """Squeeze-and-excitation gate as in the official SE-ResNet-IBN-a (bias-free linear layers)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = int(channels / reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        w = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * w


class BottleneckIBN(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), optionally grouped (ResNeXt) and with an SE gate.

    width = floor(planes * base_width / 64) * groups  (= planes for plain ResNet: base_width 64, groups 1)
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 ibn: bool = False, groups: int = 1, base_width: int = 64, se: bool = False):
        super().__init__()
        width = int(math.floor(planes * (base_width / 64))) * groups
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = IBN(width) if ibn else nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(planes * self.expansion) if se else None
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class ResNetIBN(nn.Module):
    """ResNet / ResNeXt / SE-ResNet trunk with IBN-a in layer1-layer3."""

    def __init__(self, depths: tuple[int, int, int, int], ibn_stages: tuple[bool, bool, bool, bool] = (True, True, True, False),
                 groups: int = 1, base_width: int = 64, se: bool = False, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self._block_kw = dict(groups=groups, base_width=base_width, se=se)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, depths[0], 1, ibn_stages[0])
        self.layer2 = self._make_layer(128, depths[1], 2, ibn_stages[1])
        self.layer3 = self._make_layer(256, depths[2], 2, ibn_stages[2])
        self.layer4 = self._make_layer(512, depths[3], 2, ibn_stages[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * BottleneckIBN.expansion, num_classes)
        # initialization of the official code: He-normal convs (fan-out), unit norms
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int, ibn: bool) -> nn.Sequential:
        out_ch = planes * BottleneckIBN.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_ch:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out_ch, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_ch))
        layers = [BottleneckIBN(self.inplanes, planes, stride, downsample, ibn=ibn, **self._block_kw)]
        self.inplanes = out_ch
        layers += [BottleneckIBN(out_ch, planes, 1, None, ibn=ibn, **self._block_kw) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50_ibn_a(**kw) -> ResNetIBN:
    return ResNetIBN((3, 4, 6, 3), **kw)


def resnet101_ibn_a(**kw) -> ResNetIBN:
    return ResNetIBN((3, 4, 23, 3), **kw)


def resnext101_ibn_a(**kw) -> ResNetIBN:
    """ResNeXt-101 32x4d with IBN-a (official: baseWidth=4, cardinality=32)."""
    return ResNetIBN((3, 4, 23, 3), groups=32, base_width=4, **kw)


def se_resnet101_ibn_a(**kw) -> ResNetIBN:
    return ResNetIBN((3, 4, 23, 3), se=True, **kw)


MODELS = {
    "resnet50_ibn_a": resnet50_ibn_a,
    "resnet101_ibn_a": resnet101_ibn_a,
    "resnext101_ibn_a": resnext101_ibn_a,
    "se_resnet101_ibn_a": se_resnet101_ibn_a,
}
