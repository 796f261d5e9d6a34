"""What TRP's nuclear-norm term costs per training step on the Quick tour's net (CIFAR ResNet-20, batch 64 at
16 px, 1 thread): plain steps and steps with the term, interleaved in blocks of 5, medians printed.

``python -m bench.trp_cost``"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from engine import cifar_nets
from engine.methods import lowrank


def main() -> dict[str, float]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = cifar_nets.resnet(20)(num_classes=10)
    names = [n for n, mod in m.named_modules() if lowrank.eligible(mod, "channel")]
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))

    def step(nuclear: bool) -> None:
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        if nuclear:   # as lowrank.trp_training's regulariser, at its default weight
            loss = loss + 3e-4 * torch.stack([lowrank.singular_values(lowrank.weight_matrix(
                m.get_submodule(n), "channel").float()).sum() for n in names]).sum()
        loss.backward()
        opt.step()

    for _ in range(3):
        step(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(6):
        for nuclear in (False, True):
            t0 = time.perf_counter()
            for _ in range(5):
                step(nuclear)
            times[nuclear].append((time.perf_counter() - t0) / 5)
    out = {"layers": len(names), "plain_ms": 1000 * statistics.median(times[False]),
           "nuclear_ms": 1000 * statistics.median(times[True])}
    print(out)
    return out


if __name__ == "__main__":
    main()
