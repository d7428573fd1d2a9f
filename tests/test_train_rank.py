"""Which process of a job records the run: rank zero as Lightning counts it, before any Trainer exists."""

import pytest

from attnlab.train import _is_rank_zero

RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "JSM_NAMESPACE_RANK")


@pytest.fixture
def env(monkeypatch):
    for name in RANK_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_plain_process_is_rank_zero(env):
    assert _is_rank_zero()


def test_slurm_task_other_than_the_first_is_not_rank_zero(env):
    # `srun --ntasks-per-node=2` on one node: SLURM starts both tasks itself; only SLURM_* say which is which.
    for name, value in {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "train",
                        "SLURM_NODEID": "0", "SLURM_LOCALID": "1", "SLURM_PROCID": "1"}.items():
        env.setenv(name, value)
    assert not _is_rank_zero()
    env.setenv("SLURM_LOCALID", "0")
    env.setenv("SLURM_PROCID", "0")
    assert _is_rank_zero()


@pytest.mark.parametrize("variables, zero", [
    ({"LOCAL_RANK": "1"}, False),  # a DDP child that Lightning started
    ({"RANK": "3", "LOCAL_RANK": "1"}, False),  # torchrun
    ({"RANK": "0", "LOCAL_RANK": "0"}, True),
    ({"NODE_RANK": "1"}, False),  # the launching process on the second node
    ({"JSM_NAMESPACE_RANK": "2"}, False),  # LSF jsrun
    ({"LOCAL_RANK": "1", "SLURM_PROCID": "0"}, False),  # Lightning's children inside an interactive SLURM shell
])
def test_rank_from_the_launchers_variables(env, variables, zero):
    for name, value in variables.items():
        env.setenv(name, value)
    assert _is_rank_zero() is zero
