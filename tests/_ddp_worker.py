"""Worker of test_ddp.py: one rank of a 2-process gloo group computing batch-Dice PM Dice losses."""
import torch.distributed as dist

CONFIGS = {
    "gamma2_bg1": dict(gamma=2.0, gamma_bg=1.0, batch_dice=True, ddp=True),
    "gamma1_nobg": dict(gamma=1.0, do_bg=False, batch_dice=True, ddp=True),
}
#: ranks hold unequal batch sizes, as nnU-Net gives them for an odd global batch
BOUNDS = [0, 3, 5]


def run(rank: int, world_size: int, port: int, x_full, t_full, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        from nnunet_pmdice.losses import PMDiceLoss
        sl = slice(BOUNDS[rank], BOUNDS[rank + 1])
        results = {}
        for name, kw in CONFIGS.items():
            x = x_full[sl].clone().requires_grad_()
            value = PMDiceLoss(**kw)(x, t_full[sl])
            value.backward()
            results[name] = (value.item(), x.grad)
        out[rank] = results
    finally:
        dist.destroy_process_group()
