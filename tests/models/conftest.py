import pytest
import torch

from jf_lightning.models.config import tiny
from jf_lightning.models.janusflow import JanusFlow


@pytest.fixture
def tiny_cfg():
    return tiny()


@pytest.fixture
def tiny_model(tiny_cfg):
    torch.manual_seed(0)
    return JanusFlow(tiny_cfg).eval()
