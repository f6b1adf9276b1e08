"""MOVA Multi-GPU in-process: what it refuses at the node, and the model it hands on (a view with the worker
pool as `remote`; the input model untouched). Runs with workers are in tests/host/test_multigpu.py."""
import pytest


@pytest.mark.parametrize("devices, split, message", [
    ("cpu", "cfg", "at least 2 devices"),
    ("cpu, cpu", "ulysses", "Ulysses degree 2 does not divide .* allowed degrees: 1"),
    ("cpu,cpu,cpu", "cfg+ulysses", "multiple of 2"),
    ("cpu,tpu:0", "cfg", "not a torch device|only cuda:N and cpu"),
    ("cuda:0,cuda:0", "cfg", "each worker needs its own GPU: cuda:0 is listed more than once"),
    ("cuda:1, cuda, cuda:0", "cfg", "cuda:0 is listed more than once"),
])
def test_bad_settings_are_refused_at_the_node(node_module, handle, devices, split, message):
    node = node_module("multigpu").MovaMultiGPU
    with pytest.raises(ValueError, match=message) as err:
        node.execute(handle, devices, split, 30.0)
    assert str(err.value).startswith("MOVA Multi-GPU: ")


def test_the_output_model_samples_remotely_and_the_input_is_untouched(node_module, handle):
    out = node_module("multigpu").MovaMultiGPU.execute(handle, "cpu,cpu", "cfg", 30.0).result[0]
    pool = out.pipeline.remote
    assert type(pool).__name__ == "WorkerPool" and pool.spec.devices == ("cpu", "cpu") and not pool.running
    assert handle.pipeline.remote is None and out.pipeline.cache is handle.pipeline.cache
