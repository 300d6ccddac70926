"""The tutorial's networks in PyTorch, as kiln's `nn::models` builds them (copied from the
reference-fixture generator, `make_torch_fixtures.py`, so that the benchmark needs nothing
outside this repository). `kiln bench` compares the parameter counts of both sides."""

import torch.nn as nn
import torch.nn.functional as F


class LeNet(nn.Module):
    """The network of the tutorial's first part: 1x32x32 input, 81194 parameters."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.fc1 = nn.Linear(16 * 6 * 6, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class Unet3d(nn.Module):
    """The tutorial's patch U-Net with a width parameter (the tutorial uses base=32)."""

    def __init__(self, cin, cout, base):
        super().__init__()
        b = base
        self.conv1 = nn.Conv3d(cin, b, 3, padding=1)
        self.pool1 = nn.Conv3d(b, b, 2, stride=2)
        self.conv2 = nn.Conv3d(b, 2 * b, 3, padding=1)
        self.pool2 = nn.Conv3d(2 * b, 2 * b, 2, stride=2)
        self.conv3 = nn.Conv3d(2 * b, 4 * b, 3, padding=1)
        self.pool3 = nn.Conv3d(4 * b, 4 * b, 2, stride=2)
        self.conv4 = nn.Conv3d(4 * b, 8 * b, 3, padding=1)
        self.up1 = nn.ConvTranspose3d(8 * b, 4 * b, 2, stride=2)
        self.conv5 = nn.Conv3d(4 * b, 4 * b, 3, padding=1)
        self.up2 = nn.ConvTranspose3d(4 * b, 2 * b, 2, stride=2)
        self.conv6 = nn.Conv3d(2 * b, 2 * b, 3, padding=1)
        self.up3 = nn.ConvTranspose3d(2 * b, b, 2, stride=2)
        self.conv7 = nn.Conv3d(b, b, 3, padding=1)
        self.conv8 = nn.Conv3d(b, cout, 1)

    def forward(self, x):
        x1 = F.relu(self.conv1(x))
        x2 = F.relu(self.conv2(self.pool1(x1)))
        x3 = F.relu(self.conv3(self.pool2(x2)))
        x4 = F.relu(self.conv4(self.pool3(x3)))
        x5 = F.relu(self.conv5(self.up1(x4) + x3))
        x6 = F.relu(self.conv6(self.up2(x5) + x2))
        x7 = F.relu(self.conv7(self.up3(x6) + x1))
        return F.softmax(self.conv8(x7), dim=1)


# The benchmark's U-Net: the tutorial's width, 2 input channels (FLAIR, T1), 2 classes, 32^3.
UNET_BASE, UNET_IN, UNET_OUT, UNET_SIDE = 32, 2, 2, 32


def unet_loss(p, y):
    """The tutorial's loss: cross-entropy on log(clamp(softmax)), label 2 ignored."""
    import torch

    return F.cross_entropy(torch.log(torch.clamp(p, 1e-7, 1.0)), y, ignore_index=2)
