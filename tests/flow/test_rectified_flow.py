import torch

from jf_lightning.flow.rectified_flow import (
    interpolate,
    repa_loss,
    rf_loss,
    sample_logit_normal,
    velocity_target,
)


def test_logit_normal_times_are_in_the_open_unit_interval_and_centred():
    t = sample_logit_normal(20000, torch.Generator().manual_seed(0))
    assert t.min() > 0 and t.max() < 1
    assert abs(t.mean().item() - 0.5) < 0.01
    logits = torch.logit(t)
    assert abs(logits.std().item() - 1.0) < 0.03


def test_path_endpoints_and_velocity():
    x, z0 = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(interpolate(x, z0, torch.zeros(3)), z0)  # t = 0 is noise
    torch.testing.assert_close(interpolate(x, z0, torch.ones(3)), x)  # t = 1 is data
    t = torch.tensor([0.1, 0.5, 0.9])
    eps = 1e-3
    numeric = (interpolate(x, z0, t + eps) - interpolate(x, z0, t)) / eps
    torch.testing.assert_close(numeric, velocity_target(x, z0), atol=1e-2, rtol=1e-2)


def test_rf_loss_is_mse():
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(rf_loss(a, b), ((a - b) ** 2).mean())
    assert rf_loss(a, a) == 0


def test_repa_loss_is_negative_mean_cosine_with_stop_gradient():
    pred = torch.randn(2, 5, 8, requires_grad=True)
    target = torch.randn(2, 5, 8, requires_grad=True)
    loss = repa_loss(pred, target)
    expected = -torch.nn.functional.cosine_similarity(pred, target, dim=-1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert pred.grad is not None and target.grad is None
    assert abs(repa_loss(target.detach(), target.detach()).item() + 1) < 1e-6
