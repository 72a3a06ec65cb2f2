"""The logged gradient norm and the clipping under FSDP are global: two gloo ranks holding FSDP-style shards of
the gradients get the norm of the whole gradient (and clip exactly as torch does on the whole gradient)."""

from __future__ import annotations

import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mm.train.optim import clip_grad_norm_global, global_grad_norm

SHAPES = [(7, 5), (5,), (3, 7), (3,)]  # 35 + 5 + 21 + 3 = 64 elements


def full_grads() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for shape in SHAPES]


def shards(grads: list[torch.Tensor], rank: int, world: int) -> list[torch.Tensor]:
    """This rank's pieces as FSDP (use_orig_params) exposes them: the gradients flattened into one vector, split
    into `world` contiguous chunks; each parameter's local gradient is its part of this rank's chunk (one is
    split across ranks, others lie on one rank only)."""
    flat = torch.cat([g.flatten() for g in grads])
    chunk = -(-flat.numel() // world)
    start, stop = rank * chunk, min((rank + 1) * chunk, flat.numel())
    pieces, offset = [], 0
    for grad in grads:
        lo, hi = max(start, offset), min(stop, offset + grad.numel())
        if lo < hi:
            pieces.append(flat[lo:hi].clone())
        offset += grad.numel()
    return pieces


def worker(rank: int, world: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    grads = full_grads()
    local = shards(grads, rank, world)
    sharded = float(global_grad_norm(local, sharded_over=dist.group.WORLD))
    local_only = float(global_grad_norm(local))
    replicated = float(global_grad_norm(grads))  # DDP: every rank holds the whole (averaged) gradient
    empty = float(global_grad_norm([] if rank == 0 else grads, sharded_over=dist.group.WORLD))
    clipped = [piece.clone() for piece in local]
    before = float(clip_grad_norm_global(clipped, 1.0, sharded_over=dist.group.WORLD))
    after = float(global_grad_norm(clipped, sharded_over=dist.group.WORLD))
    results[rank] = (sharded, local_only, replicated, empty, before, after, torch.cat(clipped))
    dist.destroy_process_group()


def test_sharded_gradients_give_the_norm_of_the_whole_gradient():
    world = 2
    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(world, f"{folder}/init", results), nprocs=world)
        results = dict(results)
    grads = full_grads()
    expected = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
    for rank in range(world):
        sharded, local_only, replicated, empty, before, after, clipped = results[rank]
        assert abs(sharded - expected) < 1e-5
        assert abs(local_only - expected) > 0.1  # each rank's own norm (what was logged before) is wrong
        assert abs(replicated - expected) < 1e-5  # replicated gradients are not summed over ranks
        assert abs(empty - expected) < 1e-5  # a rank without gradients still joins the sum
        assert abs(before - expected) < 1e-5 and abs(after - 1.0) < 1e-4
    # clipping the shards equals torch's clipping of the whole gradient
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for param, grad in zip(params, grads):
        param.grad = grad.clone()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    flat = torch.cat([p.grad.flatten() for p in params])
    torch.testing.assert_close(torch.cat([results[r][6] for r in range(world)]), flat)


def test_fsdp_clipping_by_norm_clips_by_the_global_norm(monkeypatch):
    """Lightning's FSDP precision plugin refuses gradient_clip_algorithm 'norm' (the FSDP recipes clip at 1.0):
    the module clips by the global norm itself. One rank here (FSDP needs a GPU): no shards to sum."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies import FSDPStrategy

    import mm.train.module as module_file
    from train_helpers import tiny_module

    module = tiny_module()
    module.configure_model()
    generator = torch.Generator().manual_seed(0)
    params = [p for p in module.parameters() if p.requires_grad]
    for param in params:
        param.grad = 10 * torch.randn(param.shape, generator=generator)
    assert float(global_grad_norm([p.grad for p in params])) > 10
    monkeypatch.setattr(module_file, "grad_shard_group", lambda strategy: None, raising=False)
    module._trainer = SimpleNamespace(strategy=FSDPStrategy(), precision_plugin=FSDPPrecision("32-true"),
                                      gradient_clip_val=1.0, gradient_clip_algorithm=None)
    module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm=None)
    assert abs(float(global_grad_norm([p.grad for p in params])) - 1.0) < 1e-4
