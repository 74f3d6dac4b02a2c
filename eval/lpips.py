"""LPIPS (Zhang et al. 2018) without torchvision: the AlexNet, VGG-16 and SqueezeNet-1.1 feature
stacks are defined here with torchvision's layer layout, so torchvision's ImageNet weights load
into them unchanged; the linear heads are the lpips project's v0.1 weights, vendored in
``eval/assets`` (BSD-2-Clause, see ``LICENSE-lpips``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

ASSETS = Path(__file__).parent / "assets"
# torchvision's published ImageNet weights (fetched through torch.hub's cache when not given locally)
BACKBONE_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}


class MetricModelError(RuntimeError):
    """A metric's model weights could not be loaded; the message says how to provide them."""


class Fire(nn.Module):
    """SqueezeNet's fire module: 1×1 squeeze, then 1×1 and 3×3 expands concatenated."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


def _conv_relu(cin: int, cout: int, **kw) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, **kw), nn.ReLU(inplace=False)]


def feature_stack(net: str) -> tuple[nn.Sequential, list[int]]:
    """The backbone's ``features`` (torchvision layout) and the indices after which LPIPS taps it."""
    if net == "alex":
        layers = [*_conv_relu(3, 64, kernel_size=11, stride=4, padding=2), nn.MaxPool2d(3, 2),
                  *_conv_relu(64, 192, kernel_size=5, padding=2), nn.MaxPool2d(3, 2),
                  *_conv_relu(192, 384, kernel_size=3, padding=1), *_conv_relu(384, 256, kernel_size=3, padding=1),
                  *_conv_relu(256, 256, kernel_size=3, padding=1)]
        return nn.Sequential(*layers), [2, 5, 8, 10, 12]
    if net == "vgg":
        layers: list[nn.Module] = []
        cin = 3
        for block, (cout, convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]):
            if block:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(convs):
                layers += _conv_relu(cin, cout, kernel_size=3, padding=1)
                cin = cout
        return nn.Sequential(*layers), [4, 9, 16, 23, 30]
    if net == "squeeze":
        layers = [*_conv_relu(3, 64, kernel_size=3, stride=2), nn.MaxPool2d(3, 2, ceil_mode=True),
                  Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
                  Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
                  Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256)]
        return nn.Sequential(*layers), [2, 5, 8, 10, 11, 12, 13]
    raise ValueError(f"unknown LPIPS network {net!r}: use alex, vgg or squeeze")


class LPIPS(nn.Module):
    """Learned perceptual distance between images in [-1, 1].

    Each tapped layer's features are unit-normalized per pixel; the squared difference is weighted
    by the layer's linear head and averaged over pixels; the layers are summed.
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        self.features, self.taps = feature_stack(net)
        heads = load_file(ASSETS / f"lpips_v0.1_{net}.safetensors")
        self.heads = nn.ParameterList([heads[f"lin{i}.model.1.weight"] for i in range(len(self.taps))])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out, start = [], 0
        for end in self.taps:
            for layer in self.features[start:end]:
                x = layer(x)
            out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            start = end
        return out

    def _layers(self, a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
        return [F.conv2d((fa - fb) ** 2, head) for fa, fb, head in zip(self._taps(a), self._taps(b), self.heads)]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance [N] between images a, b [N, 3, H, W] in [-1, 1]."""
        return sum(layer.mean(dim=(1, 2, 3)) for layer in self._layers(a, b))

    def distance_map(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-pixel LPIPS [N, 1, H, W]: each layer's map upsampled bilinearly, summed."""
        size = a.shape[-2:]
        return sum(F.interpolate(layer, size=size, mode="bilinear", align_corners=False) for layer in self._layers(a, b))


def load_lpips(net: str = "alex", backbone: str | Path | None = None) -> LPIPS:
    """LPIPS with ImageNet backbone weights.

    Args:
        net: "alex", "vgg" or "squeeze".
        backbone: a local torchvision state-dict file; None fetches torchvision's published file
            through torch.hub's cache; "random" keeps seeded random weights (tests only).

    Raises:
        MetricModelError: the weights are neither cached nor downloadable.
    """
    model = LPIPS(net)
    if backbone == "random":
        return model
    try:
        if backbone is None:
            state = torch.hub.load_state_dict_from_url(BACKBONE_URLS[net], map_location="cpu", progress=False)
        else:
            state = torch.load(backbone, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MetricModelError(
            f"cannot load the {net} backbone for LPIPS ({type(exc).__name__}: {exc}). Download "
            f"{BACKBONE_URLS[net]} on a machine with network access and pass the file (--lpips-backbone), "
            f"or put it in torch.hub's cache ({torch.hub.get_dir()}/checkpoints)."
        ) from None
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    missing, unexpected = model.features.load_state_dict(features, strict=False)
    if missing or unexpected:
        raise MetricModelError(f"{backbone or BACKBONE_URLS[net]} is not a torchvision {net} state dict "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model
