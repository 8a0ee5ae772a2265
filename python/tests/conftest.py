"""Shared pytest setup: a fixed-but-overridable seed (NYBBLE_TEST_SEED), printed on failure."""

import os

import pytest
import torch

SEED = int(os.environ.get("NYBBLE_TEST_SEED", "0")) or int.from_bytes(os.urandom(4), "little")


def pytest_report_header(config):
    return f"nybble test seed: NYBBLE_TEST_SEED={SEED}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)
    yield
