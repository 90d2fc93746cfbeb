"""A patched transformers model under torch DistributedDataParallel: two CPU processes
(gloo) on a tiny Deformable DETR give the gradients a single process gets by averaging
the two shards' gradients."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

sys.path.insert(0, os.path.dirname(__file__))
import transformers_families as F  # noqa: E402

import msdacore.torch as mt  # noqa: E402

FAMILY = "deformable_detr"

# Runs in a fresh interpreter: each rank patches its own model and trains one step on its
# shard; every rank saves the gradients DDP left in its parameters.
WORKER = """
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
import transformers; transformers.logging.set_verbosity_error()
import transformers_families as F
import msdacore.torch as mt
from torch.nn.parallel import DistributedDataParallel

def loss_of(out, spec):
    return sum((torch.nan_to_num(getattr(out, n)) *
                torch.linspace(-1, 1, getattr(out, n).shape[-1], dtype=torch.float64)).sum()
               for n in spec.outputs)

def main(rank, world, store):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank,
                            world_size=world)
    spec = F.BY_NAME[{family!r}]
    model = F.tiny_model(spec)
    assert mt.patch_transformers(model).total == 4
    ddp = DistributedDataParallel(model, find_unused_parameters=True)
    inputs = spec.inputs(torch.Generator().manual_seed(10 + rank), torch.float64)
    loss_of(ddp(**inputs), spec).backward()
    grads = {{n: p.grad for n, p in model.named_parameters() if p.grad is not None}}
    torch.save(grads, os.path.join({out!r}, f"grads{{rank}}.pt"))
    dist.destroy_process_group()

if __name__ == "__main__":
    import torch.multiprocessing as mp
    mp.spawn(main, args=(2, os.path.join({out!r}, "store")), nprocs=2, join=True)
    print("ddp done")
"""


def _loss(out, spec):
    return sum((torch.nan_to_num(getattr(out, n)) *
                torch.linspace(-1, 1, getattr(out, n).shape[-1], dtype=torch.float64)).sum()
               for n in spec.outputs)


def test_ddp_gradients_equal_averaged_single_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER).format(
        tests=os.path.dirname(__file__), family=FAMILY, out=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "ddp done" in done.stdout
    ranks = [torch.load(tmp_path / f"grads{r}.pt") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()

    spec = F.BY_NAME[FAMILY]
    model = F.tiny_model(spec)
    mt.patch_transformers(model)
    shards = []
    for rank in range(2):
        model.zero_grad()
        _loss(model(**spec.inputs(torch.Generator().manual_seed(10 + rank), torch.float64)),
              spec).backward()
        shards.append({n: p.grad.clone() for n, p in model.named_parameters()
                       if p.grad is not None})
    assert shards[0].keys() == ranks[0].keys()
    checked = 0
    for name, grad in ranks[0].items():
        expected = (shards[0][name] + shards[1][name]) / 2
        torch.testing.assert_close(ranks[1][name], grad, rtol=0, atol=0)  # DDP: all equal
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12,
                                   msg=lambda m, name=name: f"{name}: {m}")
        checked += "sampling_offsets" in name
    assert checked > 0
