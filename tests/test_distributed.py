"""Data-parallel training: sharded batches and a 2-process Gloo run under torchrun equal to one process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from connprune.data.pipeline import Batches
from connprune.experiments.jobs import build_model
from connprune.train import Trainer, default_recipe, distributed

RECIPE = dict(epochs=2, batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9, seed=3)

WORKER = textwrap.dedent(
    """
    import sys
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    from connprune import data
    from connprune.experiments.jobs import build_model
    from connprune.train import Trainer, default_recipe, distributed

    assert distributed.init_from_env() and distributed.world_size() == 2
    train = data.load("digits", "train")
    model = build_model("mlp", train.info, seed=0)
    if distributed.rank() == 1:  # a different start: DDP must broadcast rank 0's weights
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    trainer = Trainer(model, train, None, default_recipe("digits", **RECIPE), progress=False, device="cpu")
    assert trainer.batches.local_batch_size == 32
    trainer.fit()
    state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, f"{sys.argv[1]}/rank{distributed.rank()}.safetensors")
    print("history", distributed.rank(), trainer.history)
    """
)


def test_batches_shard_a_global_permutation(digits_train):
    n = len(digits_train)
    data = digits_train.__class__(digits_train.images, torch.arange(n), digits_train.info, "train")  # label = index
    single = Batches(data, 64, shuffle=True, generator=torch.Generator().manual_seed(7))
    shards = [Batches(data, 64, shuffle=True, generator=torch.Generator().manual_seed(7), rank=r, world_size=2)
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(single)  # 1347 = 21·64 + 3: the tail of 3 is kept
    for _ in range(2):  # two epochs: each draws a new permutation, the same on every rank
        reference = [y for _, y in single]
        local = [[y for _, y in shard] for shard in shards]
        for step, global_labels in enumerate(reference):
            a, b = local[0][step], local[1][step]
            assert len(a) + len(b) == len(global_labels) and len(a) - len(b) in (0, 1)
            assert not set(a.tolist()) & set(b.tolist())
            assert sorted(a.tolist() + b.tolist()) == sorted(global_labels.tolist())
        union = torch.cat([torch.cat(part) for part in local])
        assert sorted(union.tolist()) == list(range(n))
        # within full batches this is DistributedSampler's shard perm[rank::world], chunked into local batches
        permutation = torch.cat(reference)
        assert torch.equal(torch.cat(local[1][:-1]), permutation[: 21 * 64][1::2])


def test_batches_reject_bad_sharding(digits_train):
    with pytest.raises(ValueError, match="divisible"):
        Batches(digits_train, 63, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        Batches(digits_train, 64, rank=2, world_size=2)


def test_single_process_helpers_are_no_ops():
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_main()
    t = torch.arange(6).view(3, 2)
    assert distributed.gather_tensors(t) is t
    distributed.barrier()


def test_two_gloo_processes_match_one_process_with_the_global_batch(digits_train, tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(f"RECIPE = {RECIPE!r}\n" + WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    model = build_model("mlp", digits_train.info, seed=0)
    trainer = Trainer(model, digits_train, None, default_recipe("digits", **RECIPE), progress=False, device="cpu")
    trainer.fit()
    single = model.state_dict()
    assert set(single) == set(rank0)
    for key, value in single.items():
        torch.testing.assert_close(rank0[key], value, rtol=0, atol=1e-5, msg=key)
    assert any((value - build_model("mlp", digits_train.info, seed=0).state_dict()[k]).abs().max() > 1e-2
               for k, value in single.items())  # it did train


def test_gather_tensors_of_different_lengths(tmp_path: Path):
    script = tmp_path / "gather.py"
    script.write_text(textwrap.dedent(
        """
        import torch
        from connprune.train import distributed
        distributed.init_from_env()
        r = distributed.rank()
        out = distributed.gather_tensors(torch.full((r + 1, 2), float(r)))
        assert out.tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]], out
        assert distributed.is_main() == (r == 0)
        """
    ))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not dist.is_initialized()
