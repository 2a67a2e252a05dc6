"""The training loop: 2 ranks x batch b == 1 process x batch 2b; sampler sharding; gradient reduction."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from bike.data.dataset import VideoItem
from bike.engine.sampler import TrainSampler
from tests.bike.engine.tinyrun import CLASSES, tiny_config

N_ITEMS, T, S = 8, 2, 32


class _Synthetic(torch.utils.data.Dataset):
    """Fixed random clips; labels with repeats so batches hold several positives."""

    def __len__(self):
        return N_ITEMS

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(100 + i)
        return VideoItem(torch.randn(T, 3, S, S, generator=g), i % len(CLASSES), f"v{i}", 0)


class _SyntheticEval(torch.utils.data.Dataset):
    """7 videos x 2 views in test mode (what score_videos needs of a VideoDataset)."""

    num_views = 2

    def __init__(self):
        from types import SimpleNamespace

        from bike.data.dataset import BadVideoLog

        self.records = [SimpleNamespace(video_id=f"e{i}") for i in range(7)]
        self.bad_log = BadVideoLog(total=7, train=False)

    def __len__(self):
        return 14

    def __getitem__(self, i):
        vid, view = divmod(i, 2)
        g = torch.Generator().manual_seed(1000 + i)
        return VideoItem(torch.randn(T, 3, S, S, generator=g), vid % len(CLASSES), f"e{vid}", view)


def _config(global_batch, finetune_text):
    return tiny_config(
        {"root": "/nonexistent", "num_workers": 0},
        model={"finetune_category_encoder": finetune_text},
        train={"batch_size": global_batch, "epochs": 2, "warmup_epochs": 0, "lr_new": 1e-3, "lr_clip": 1e-3,
               "select_on": "none", "log_every": 100},
    )


def _train(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from bike.distributed import init_distributed
    from bike.engine.logging import RunLogger
    from bike.engine.model import BikeModel
    from bike.engine.optim import WarmupCosineSchedule, build_optimizer
    from bike.engine.precision import make_grad_scaler
    from bike.engine.train_loop import Trainer, VideoStageTask, broadcast_parameters, reseed

    if world > 1:
        init_distributed()
    device = torch.device("cpu")
    for finetune in (False, True):
        cfg = _config(4, finetune)
        reseed(cfg.seed)
        model = BikeModel.from_config(cfg, CLASSES)
        model.configure_stage("video", finetune)
        broadcast_parameters(model)
        reseed(cfg.seed + rank)
        task = VideoStageTask(model, _Synthetic(), cfg, device, 0, cfg.seed)
        opt = build_optimizer(model, cfg.train, model.is_pretrained)
        run_dir = Path(out_dir) / f"w{world}_r{rank}_{finetune}"
        logger = RunLogger(run_dir, is_main=rank == 0, progress=False)
        trainer = Trainer(cfg, model, task, opt, WarmupCosineSchedule(opt, 0, 2), make_grad_scaler("fp32", device),
                          run_dir, logger, device)
        trainer.fit()
        logger.close()
        if rank == 0:
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, Path(out_dir) / f"w{world}_{finetune}.pt")
    # evaluation: whole videos per rank, gathered on rank 0, per-view logits spilled and assembled
    from bike.engine.eval_loop import score_videos

    ecfg = tiny_config({"root": "/nonexistent", "num_workers": 0}, eval={"clips": 2, "batch_size": 3})
    vs = score_videos(model, _SyntheticEval(), ecfg, device, view_scores_path=Path(out_dir) / f"views_w{world}.npy")
    if rank == 0:
        torch.save({"ids": vs.video_ids, "scores": vs.scores, "labels": vs.labels, "views": vs.view_scores.copy(),
                    "counts": vs.counts}, Path(out_dir) / f"eval_w{world}.pt")
    else:
        assert vs is None
    if world > 1:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_global_batch(tmp_path):
    mp.spawn(_train, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    _train(0, 1, 0, str(tmp_path))
    from bike.engine.model import BikeModel

    cfg = _config(4, False)
    torch.manual_seed(cfg.seed)
    init = BikeModel.from_config(cfg, CLASSES).state_dict()
    for finetune in (False, True):
        two = torch.load(tmp_path / f"w2_{finetune}.pt")
        one = torch.load(tmp_path / f"w1_{finetune}.pt")
        moved = 0
        for k in one:
            a, b = two[k], one[k]
            if k.endswith("attn.in_proj_bias"):
                # the key bias cannot change attention (softmax is shift invariant): its gradient is zero
                # in exact arithmetic and Adam turns the rounding noise into full-size steps; compare the
                # query and value parts only
                d = a.shape[0] // 3
                a, b = torch.cat([a[:d], a[2 * d :]]), torch.cat([b[:d], b[2 * d :]])
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
            moved += not torch.allclose(one[k], init[k])
        assert moved > 10  # training changed the weights
        text_key = "backbone.model.token_embedding.weight"
        assert torch.equal(one[text_key], init[text_key]) != finetune
    e2 = torch.load(tmp_path / "eval_w2.pt", weights_only=False)
    e1 = torch.load(tmp_path / "eval_w1.pt", weights_only=False)
    assert e2["ids"] == e1["ids"] == [f"e{i}" for i in range(7)]  # every video once, in list order
    assert e2["counts"]["evaluated"] == 7 and e2["views"].shape == (7, 2, len(CLASSES))
    np.testing.assert_allclose(e2["scores"], e1["scores"], atol=1e-4)
    np.testing.assert_allclose(e2["views"].astype(np.float32), e1["views"].astype(np.float32), atol=2e-3)
    np.testing.assert_array_equal(e2["labels"], np.arange(7) % len(CLASSES))
    assert not list(tmp_path.glob(".*spill"))


def test_sampler_ranks_concatenate_to_the_single_process_batches():
    single = list(TrainSampler(10, 4, seed=3))
    ranks = [list(TrainSampler(10, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    rebuilt = []
    for b in range(2):
        for r in range(2):
            rebuilt += ranks[r][b * 2 : (b + 1) * 2]
    assert rebuilt == single and len(single) == 8  # the incomplete last batch is dropped
    s = TrainSampler(10, 4, seed=3)
    s.set_epoch(1)
    epoch1 = list(s)
    assert epoch1 != single
    s.set_start(1)  # mid-epoch resume skips the first batch
    assert list(s) == epoch1[4:] and len(s) == 4


def test_sampler_refuses_a_dataset_smaller_than_a_batch():
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        TrainSampler(3, 2, world_size=2)
