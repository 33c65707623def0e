"""Batch Dice under DDP: two gloo ranks on the CPU optimise the global Dice of the whole batch."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from nnunet_pmdice.losses import PMDiceLoss


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_target(rank, world_size, port, x, t, out):
    import _ddp_worker
    _ddp_worker.run(rank, world_size, port, x, t, out)


def test_two_rank_batch_dice_equals_single_process():
    import _ddp_worker
    torch.manual_seed(0)
    x = 2 * torch.randn(5, 3, 16, 16)
    t = torch.randint(0, 3, (5, 1, 16, 16))
    t[3:] = 0  # classes 1 and 2 present on rank 0 only: "present" must be decided on the global batch
    world = 2
    with mp.Manager() as manager:
        shared = manager.dict()
        mp.spawn(_spawn_target, args=(world, _free_port(), x, t, shared), nprocs=world, join=True)
        out = dict(shared)

    for name, kw in _ddp_worker.CONFIGS.items():
        kw = {k: v for k, v in kw.items() if k != "ddp"}
        xs = x.clone().requires_grad_()
        value = PMDiceLoss(**kw)(xs, t)
        value.backward()
        for rank in range(world):
            rank_value, rank_grad = out[rank][name]
            start, stop = _ddp_worker.BOUNDS[rank], _ddp_worker.BOUNDS[rank + 1]
            assert rank_value == pytest.approx(value.item(), abs=1e-6), (name, rank)
            # nnU-Net's AllGatherGrad sums every rank's gradient of the (identical) global loss and DDP
            # then averages parameter gradients over the ranks: a rank's logit gradient divided by the
            # world size is exactly its share of the single-process gradient.
            torch.testing.assert_close(rank_grad / world, xs.grad[start:stop], rtol=1e-4, atol=1e-8)


def test_ddp_flag_without_process_group_is_single_process():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8)
    t = torch.randint(0, 3, (2, 1, 8, 8))
    a = PMDiceLoss(batch_dice=True, ddp=True)(x, t)
    b = PMDiceLoss(batch_dice=True, ddp=False)(x, t)
    assert a.item() == b.item()
