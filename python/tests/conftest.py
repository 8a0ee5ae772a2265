"""Shared pytest setup: a fixed-but-overridable seed (NYBBLE_TEST_SEED), printed on failure, and
the ``device`` fixture that runs a test on the CPU and on CUDA.

``device`` is module-scoped so that module-scoped fixtures (a reference subprocess, prepared
inputs) can be built once per device; pytest then runs a module's CPU cases before its CUDA ones.
The CUDA cases skip, with the reason shown, on a machine without a GPU and with a build of nybble
without the CUDA backend."""

import os

import pytest
import torch

SEED = int(os.environ.get("NYBBLE_TEST_SEED", "0")) or int.from_bytes(os.urandom(4), "little")

DEVICES = ["cpu", "cuda"]


def pytest_report_header(config):
    return f"nybble test seed: NYBBLE_TEST_SEED={SEED}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)
    yield


def cuda_skip_reason():
    """Why the CUDA cases cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return "CUDA: no GPU (torch.cuda.is_available() is False)"
    from nybble import _C  # imported here: test_dropin checks what importing the drop-in loads

    if not _C.cuda_built():
        return "CUDA: nybble was built without CUDA (nybble._C.cuda_built() is False)"
    return None


@pytest.fixture(scope="module", params=DEVICES, ids=DEVICES)
def device(request):
    """"cpu" or "cuda": the device a test creates its inputs on (the same test functions run on
    both)."""
    if request.param == "cuda":
        reason = cuda_skip_reason()
        if reason:
            pytest.skip(reason)
    return request.param
