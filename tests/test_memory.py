"""``mtransfer bench --memory``: allocations followed on fake tensors, checked against real memory."""

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from mtransfer.bench.memory import BLOCK, AllocationTracker, fake_models, measure_pass, rss_cross_check


def test_tracker_counts_new_storages_frees_and_what_backward_starts_with() -> None:
    with FakeTensorMode():
        weight = torch.randn(256, 256, requires_grad=True)
        tracker = AllocationTracker()
        with tracker:
            x = torch.randn(256, 256)
            view = x[:, :128]  # a view: no new memory
            hidden = (x @ weight).relu()  # matmul result dies after relu; relu's output is kept
            del view
            loss = (hidden @ weight).sum()
            live_after_forward = tracker.live
            (grad,) = torch.autograd.grad(loss, weight)
    unit = 256 * 256 * 4
    # x (saved for the weight's gradient) and relu's output (saved twice, one storage) stay, the matmul results
    # die (sum keeps nothing), plus the scalar loss in one block
    assert live_after_forward == 2 * unit + BLOCK
    assert tracker.at_backward == live_after_forward + BLOCK  # and the seed gradient of the loss
    assert tracker.peak >= 4 * unit and grad.shape == weight.shape


def test_checkpointing_and_bf16_shrink_what_backward_keeps_on_the_real_architecture_shapes() -> None:
    with fake_models("tiny", "raft-small") as (backend, estimator):
        figures = {spec: measure_pass(backend, estimator, 128, 1, spec)
                   for spec in ("baseline", "checkpoint-unet", "checkpoint-raft", "checkpoint", "bf16")}
        double = measure_pass(backend, estimator, 128, 2, "baseline")
    base = figures["baseline"]
    assert base.weights > 0 and len({f.weights for f in figures.values()}) == 1
    for spec in ("checkpoint-unet", "checkpoint-raft", "checkpoint", "bf16"):
        assert figures[spec].saved_for_backward < base.saved_for_backward, spec
    assert figures["checkpoint"].saved_for_backward < figures["checkpoint-unet"].saved_for_backward
    assert 1.6 < double.saved_for_backward / base.saved_for_backward < 2.4


def test_method_agrees_with_the_resident_set_on_real_cpu_tensors() -> None:
    check = rss_cross_check(size=128, model="tiny", raft="raft-small", speed="baseline")
    assert check["tracked_bytes"] > 50 * 2**20
    assert abs(check["rss_bytes"] - check["tracked_bytes"]) <= 0.15 * check["tracked_bytes"], check


def test_raft_checkpointing_keeps_the_flow_and_its_gradient_and_is_undone() -> None:
    from mtransfer.diffusion.stable_diffusion import random_stable_diffusion
    from mtransfer.estimators import load_raft
    from mtransfer.speed import fast_path, parse_fast_path

    torch.manual_seed(0)
    estimator = load_raft("raft-small", weights="random", iterations=2)
    source = torch.rand(1, 3, 128, 128)

    def flow_and_grad(raft):
        target = source.roll(3, dims=-1).requires_grad_(True)
        flow = raft(source, target)
        (grad,) = torch.autograd.grad(flow.square().mean(), target)
        return flow.detach(), grad

    plain = flow_and_grad(estimator)
    modules = {name: getattr(estimator.model, name) for name in ("feature_encoder", "update_block")}
    with fast_path(random_stable_diffusion("tiny"), estimator, parse_fast_path("checkpoint-raft")) as (_, fast):
        assert type(fast.model.update_block).__name__ == "_Checkpointed"
        checkpointed = flow_and_grad(fast)
    torch.testing.assert_close(checkpointed[0], plain[0])
    torch.testing.assert_close(checkpointed[1], plain[1])
    assert {name: getattr(estimator.model, name) for name in modules} == modules
