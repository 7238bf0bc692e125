"""`quantize: nf4` jobs on SQLite and PostgreSQL: the spec field at the door, the registry column
(`job show`), the claim (a CPU worker never takes one; a CUDA worker does), what the CPU worker's
runner logs and what `lorafleet status` says while it waits, and the pack rule."""

from __future__ import annotations

import pytest

from lora_engine.errors import SpecError
from lora_engine.packing import refusal
from lora_engine.spec import validate_spec
from orchestrator.dispatch import JobClass
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job
from orchestrator.services.jobs import get_job, submit_job
from orchestrator.services.leases import claim_next, message_class, unclaimable_reason
from orchestrator.services.reconcile import by_class
from orchestrator.services.status import fleet_status
from orchestrator.services.tenants import create_tenant
from orchestrator.services.workers import WorkerInfo, register_worker
from worker.presence import Presence
from worker.runner import run_job

pytest_plugins = ["registry_fixtures"]

NF4 = {"task": "e2e", "method": "lora", "rank": 4, "base_model": "tiny-llama", "max_steps": 2,
       "quantize": "nf4"}
PLAIN = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 5}


def test_a_cpu_worker_never_claims_an_nf4_job_and_status_says_why(registry_settings):
    settings = registry_settings
    with session_scope(settings) as s:
        create_tenant(s, "acme", max_running=3)
        job = submit_job(s, "acme", NF4, settings=settings)
        assert (job.quantize, job.spec["quantize"]) == ("nf4", "nf4")
        assert get_job(s, job.id).to_dict()["quantize"] == "nf4"  # what `job show` prints
        job_id = job.id
    # A real worker of this CPU: its presence registers it with the device pick_device chose, and
    # its runner claims with that device kind.
    presence = Presence(settings, "cpu-node")
    presence.register()
    result = run_job(job_id, worker_id=presence.id, settings=settings, cache=None)
    assert result.outcome == "skipped"
    assert result.detail == (f"job {job_id} trains on an nf4-quantised base, which needs a CUDA worker; "
                             "this worker's device is cpu")
    with session_scope(settings) as s:
        assert (s.get(Job, job_id).state, s.get(Job, job_id).attempts) == ("queued", 0)
        (waiting,) = fleet_status(s, lease_seconds=settings.lease_seconds).waiting
        assert waiting.why == ("needs a CUDA worker (quantize: nf4, bitsandbytes' 4-bit kernels); every live "
                               "worker is on a CPU: start `lorafleet worker` on a GPU machine with "
                               "`pip install 'lorafleet[qlora]'`")
        # A full-precision job queued behind it is not held up on the CPU worker.
        plain = submit_job(s, "acme", PLAIN, settings=settings)
        assert claim_next(s, presence.id, 60).id == plain.id
        assert claim_next(s, presence.id, 60, device_kind="cpu") is None

        # A CUDA worker reports in: the job is next in line, and that worker claims it.
        register_worker(s, WorkerInfo("gpu:1", "host", 1, settings.queue, "cuda", "cuda:NVIDIA H100", 10.0))
        assert fleet_status(s, lease_seconds=settings.lease_seconds).waiting[0].why == (
            "next in line, for the next free worker")
        assert unclaimable_reason(s, job_id, 1, "cuda") == f"job {job_id} is queued and claimable"
        claimed = claim_next(s, "gpu:1", 60, device_kind="cuda")
        assert claimed is not None and claimed.id == job_id and claimed.state == "running"


@pytest.mark.parametrize(("change", "says"), [
    ({"method": "full"}, "quantize: method 'full' trains the base weights themselves"),
    ({"method": "dora"}, "quantize: method 'dora' rescales by the norm of the whole weight"),
    ({"task": "sst2", "base_model": "tiny-llama"}, "quantize: task 'sst2' trains a classification head"),
    ({"base_model": "tiny-gpt2"}, "quantize: base model 'tiny-gpt2' is a gpt2 model; nf4 is for Llama"),
    ({"quantize": "int8"}, "quantize: Input should be 'nf4'"),
    ({"devices": 2}, "quantize: an nf4 job trains on one device (got devices: 2)"),
])
def test_quantize_is_checked_at_the_door(change, says):
    with pytest.raises(SpecError) as err:
        validate_spec(dict(NF4, **change))
    assert any(p.startswith(says) for p in err.value.problems), err.value.problems


def test_what_quantize_allows():
    assert validate_spec(NF4).quantize == "nf4"
    assert validate_spec(dict(NF4, method="rslora", base_model="smollm2-135m")).quantize == "nf4"
    assert validate_spec({k: v for k, v in NF4.items() if k != "quantize"}).quantize is None
    with pytest.raises(SpecError) as err:  # the baseline trains nothing: nothing to quantise for
        validate_spec({"task": "e2e", "method": "none", "base_model": "tiny-llama", "quantize": "nf4"})
    assert "quantize: not used by method 'none'" in " ".join(err.value.problems)
    assert refusal(method="lora", arch="llama", kind="generation", quantize="nf4") == (
        "a job on an nf4-quantised base cannot be packed (a pack shares one base in full precision): "
        "it trains alone")


def test_a_message_wakes_a_cuda_worker_for_a_job_of_its_own_class(session):
    """An nf4 job's message has its own queue (`dispatch.job_queue`: `gpu.cuda`), which only CUDA
    workers consume, beside `gpu`: a CUDA worker woken by either message claims a job of that
    message's class, never one whose own message waits on the other queue."""
    create_tenant(session, "acme", max_running=4)
    nf4 = submit_job(session, "acme", NF4)  # older: first in fair-share order
    plain = submit_job(session, "acme", PLAIN)
    assert by_class(session, [nf4.id, plain.id]) == {JobClass(1, True): [nf4.id],
                                                     JobClass(1, False): [plain.id]}
    assert message_class(session, nf4.id) == JobClass(1, True)

    assert claim_next(session, "cpu:1", 60, message=nf4.id) is None  # a CPU worker, whatever it hears
    claimed = claim_next(session, "gpu:1", 60, device_kind="cuda", message=plain.id)
    assert claimed is not None and claimed.id == plain.id  # not the older nf4 job
    # No other plain job; the nf4 job's own message is on its way to a CUDA worker.
    assert claim_next(session, "gpu:2", 60, device_kind="cuda", message=plain.id) is None
    claimed = claim_next(session, "gpu:2", 60, device_kind="cuda", message=nf4.id)
    assert claimed is not None and claimed.id == nf4.id
