"""Ray Serve: two replicas behind one OpenAI endpoint, and a replica killed mid-run. One
cluster for the module, in a private network namespace (see test_ray.py)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from test_ray import namespace_refusal, run_in_namespace

pytestmark = pytest.mark.slow  # a Ray cluster: CI runs these, the fast tier does not

pytest.importorskip("ray.serve", reason="the ray extra is not installed")
pytest.importorskip("openai", reason="the openai client is not installed")
try:
    import gpt2_onnx.apps.server  # noqa: F401  (the serve extra)
except ImportError:
    pytest.skip("the serve extra is not installed", allow_module_level=True)

SCRIPT = Path(__file__).with_name("ray_serve_script.py")


@pytest.fixture(scope="module")
def served(tiny_model):
    refusal = namespace_refusal()
    if refusal:
        pytest.skip(refusal)
    proc = run_in_namespace([sys.executable, str(SCRIPT), str(tiny_model)], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_replicas_answer_the_openai_client(served):
    assert served["node"] == "127.0.0.1" and served["replicas"] == 2
    assert served["text"] == served["streamed"] == served["local"]


def test_replicas_keep_the_prefix_cache_of_the_command_line(served):
    assert served["cached"] == [served["cached_local"]] * 6
    assert served["prefix_cache_bytes"] > 0 and served["prefix_cache_hits"] > 0


def test_replicas_hold_a_request_to_its_constraint_as_the_local_runtime_does(served):
    """structured output through Ray Serve (it was tested only on the single-process server and in batch jobs)"""
    assert served["guided"] == [served["guided_local"]] * 4
    assert re.fullmatch(served["guided_regex"], served["guided_local"]), served["guided_local"]


def test_a_killed_replica_fails_cleanly_and_comes_back(served):
    assert len(served["in_flight"]) == 4
    assert all(o == "ok" or o.startswith("status 5") for o in served["in_flight"]), served["in_flight"]
    assert served["after_kill"] == [served["local"]] * 6
    assert served["running_after"] == 2
