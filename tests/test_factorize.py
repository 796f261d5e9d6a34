"""factorize building blocks: SVD initialisation is exact where the structure allows, MACs drop."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from engine import measure, models
from engine.methods import factorize as Fz


@pytest.mark.fast
def test_asymmetric_pair_at_full_rank_equals_the_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, 2, 1, bias=True)
    x = torch.randn(2, 4, 9, 9)
    pair = Fz.asymmetric(conv, 100)
    assert pair[0].kernel_size == (3, 1) and pair[1].kernel_size == (1, 3)
    assert (pair(x) - conv(x)).abs().max() < 1e-5


def test_depthwise_separable_init_recovers_a_separable_conv():
    torch.manual_seed(0)
    dw, pw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.Conv2d(4, 6, 1)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(pw.weight * dw.weight.transpose(0, 1))
        conv.bias.copy_(pw.bias)
    pair = Fz.depthwise_separable(conv)
    assert pair[0].groups == 4 and pair[1].kernel_size == (1, 1)
    x = torch.randn(2, 4, 7, 7)
    assert (pair(x) - conv(x)).abs().max() < 1e-5


def test_rewrite_changes_layer_types_and_lowers_macs_by_the_reported_amount():
    for mode, check in (("depthwise_separable", lambda s: s[0].groups == s[0].in_channels > 1),
                        ("asymmetric", lambda s: s[0].kernel_size == (3, 1) and s[1].kernel_size == (1, 3))):
        model = models.build("resnet18", 10, True).eval()
        macs0 = measure.count_macs(model, (3, 8, 8))["macs"]
        report = Fz.rewrite(model, (3, 8, 8), mode, 1.0)
        assert report
        assert all(isinstance(model.get_submodule(n), nn.Sequential) and check(model.get_submodule(n)) for n in report)
        saved = sum(r["macs_before"] - r["macs_after"] for r in report.values())
        assert saved > 0 and macs0 - measure.count_macs(model, (3, 8, 8))["macs"] == saved
