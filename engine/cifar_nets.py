"""The CIFAR benchmark nets of the pruning literature, built natively for 32x32 inputs.

- ResNet-8/14/20/32/56/110 (He et al. 2016, section 4.2; 8 and 14 are the depths a block-pruned
  ResNet-20 reaches): a 3x3 stem of 16 channels, then three stages of ``n`` basic blocks at
  16/32/64 channels (depth = 6n + 2). Shortcuts that change shape are a 1x1 convolution + BN
  ("option B"), as in Torch-Pruning's and chenyaofo's CIFAR models: the paper's zero-padding
  shortcut ("option A") cannot be pruned channel-wise. ResNet-20 is 0.27 M params / 40.8 M MACs,
  ResNet-56 0.86 M / 125.5 M.
- VGG-16-BN as in HRank/DepGraph: 13 conv layers, then Linear(512, 512) + BN + ReLU + Linear
  (15.0 M params, 313.7 M MACs).
- MobileNetV2 with the CIFAR strides (kuangliu, chenyaofo): stride-1 stem and first 24-channel
  stage, so the 32x32 image is downsampled 8x, not 32x (2.2 M params, 88 M MACs).

- ViT for 32x32 (``vit_cifar``): torchvision's VisionTransformer with 4x4 patches, so a 32x32 image
  is 64 tokens + the class token (ViT-B/16's 16x16 patches would leave 4 tokens, too few for attention
  to learn from; 2x2 would make 256, four times the tokens and ~16x the attention cost), 6 layers of
  width 192, 3 heads, MLP 384: small enough to train from scratch on CPU, as in the CIFAR ViT
  literature's "ViT-Lite" (Hassani et al. 2021).

``width`` scales every stage's channels (for the width-scaling controls).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import MobileNetV2, VisionTransformer


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, width: float = 1.0):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [_ch(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin, stages = widths[0], []
        for i, c in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, c, 2 if (i > 0 and j == 0) else 1))
                cin = c
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# HRank's cfg for VGG-16: "M" is a 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class CifarVGG(nn.Module):
    def __init__(self, num_classes: int, width: float = 1.0, cfg=VGG16_CFG):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            c = _ch(v, width)
            layers += [nn.Conv2d(cin, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # 2x2 at 32x32 input: HRank pools it to 1x1 too
        hidden = _ch(512, width)
        self.classifier = nn.Sequential(nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# torchvision's setting (t, c, n, s) with the CIFAR strides: the first 24-channel stage keeps 32x32.
CIFAR_MBV2_SETTING = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2],
                      [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


def mobilenet_v2_cifar(num_classes: int, width: float = 1.0) -> nn.Module:
    model = MobileNetV2(num_classes=num_classes, width_mult=width, inverted_residual_setting=CIFAR_MBV2_SETTING)
    model.features[0][0].stride = (1, 1)
    return model


def resnet(depth: int):
    return lambda num_classes, width=1.0: CifarResNet(depth, num_classes, width)


def vgg16_bn(num_classes: int, width: float = 1.0) -> nn.Module:
    return CifarVGG(num_classes, width)


def vit_cifar(num_classes: int, width: float = 1.0) -> nn.Module:
    """A small vision transformer for 32x32 images (see the module's docstring); no width multiplier."""
    return VisionTransformer(image_size=32, patch_size=4, num_layers=6, num_heads=3, hidden_dim=192,
                             mlp_dim=384, num_classes=num_classes)
