"""`lorafleet serve` as a real process (embedded registry), through the official openai client:
tiny adapters made with lora_engine and registered by the real import service, served chat and
completions (streamed and not), classify, isolation between tenants, OpenAI's errors, the
adapter LRU evicting by bytes and reloading (its metrics), the usage recorded per tenant (and
written at a clean stop), a revoked key refused within the server's registry cache time, a
deleted adapter 404 at once, and greedy output equal to `adapter predict`'s (lora_engine.predict)
for the same adapter."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.api_server import ApiProcess, api_env, free_port, start_api

MR = "name[The Eagle], eatType[coffee shop], food[Italian], area[riverside]"
TOKENS = 8
# A generation that outlasts the requests sent while it decodes: the bare tiny-llama base says
# no end-of-sequence within it for MR (greedy, deterministic), so it runs to its length.
LONG = 480
DECODING = "lorafleet_serve_rows_decoding"
JOINED = 'lorafleet_serve_joined_total{kind="%s"}'
START_TIMEOUT_S = 90
REGISTRY_CACHE_S = 1.0  # how long the server trusts a verified key (LORAFLEET_SERVE_REGISTRY_CACHE_S)


@dataclass
class Served:
    server: ApiProcess
    metrics_url: str
    keys: dict[str, str]
    names: dict[str, str]  # what -> ft: model name
    paths: dict[str, str]

    def client(self, tenant: str = "acme") -> openai.OpenAI:
        return self.server.client(self.keys[tenant])

    def post(self, path: str, body: dict, tenant: str = "acme") -> httpx.Response:
        return httpx.post(self.server.base_url + path, json=body, timeout=60,
                          headers={"Authorization": f"Bearer {self.keys[tenant]}"})

    def metric(self, name: str, default: float | None = None) -> float:
        """A series' value (`name` with its labels, as the exporter writes them); `default` for a
        labelled series not yet counted."""
        for line in httpx.get(self.metrics_url, timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        if default is not None:
            return default
        raise AssertionError(f"no metric {name}")

    def wait_for(self, name: str, wanted, what: str) -> float:
        """Poll a metric until `wanted(value)` (a deadline against a stuck server, not a timing)."""
        deadline = time.monotonic() + 60
        while not wanted(value := self.metric(name, 0.0)):
            assert time.monotonic() < deadline, f"{what}: {name} stayed {value}"
            time.sleep(0.05)
        return value


def make_adapter(folder: Path, base: str, task: str, seed: int) -> Path:
    """A LoRA adapter of `base` for `task` with non-zero, seeded B matrices (and head)."""
    import torch

    from lora_engine.adapters.folder import AdapterMeta
    from lora_engine.adapters.io import save_adapter
    from lora_engine.catalog import TASKS
    from lora_engine.inject import LoraSettings, inject_lora
    from lora_engine.models import load_base_model

    info = TASKS[task]
    torch.manual_seed(seed)
    model, _ = load_base_model(base, info.kind, len(info.label_names) or None)
    settings = LoraSettings(rank=4)
    inject_lora(model, settings)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=gen))
    meta = AdapterMeta.for_task(info, base_model=base, method="lora")
    save_adapter(model, folder, base_model_name=base, settings=settings, task_type=info.kind, meta=meta)
    return folder


def register(session, tenant: str, folder: Path, settings) -> tuple[str, str]:
    from orchestrator.services.adapters import model_names_of
    from orchestrator.services.imports import check_import, import_adapter

    foreign, base = check_import(session, tenant, folder, settings=settings)
    row = import_adapter(session, tenant, foreign, base, settings=settings)
    return model_names_of(session, [row])[row.id], row.path


def trained_on_chat(session, settings, tenant: str, top: Path) -> tuple[str, str]:
    """An adapter as a finished job on a chat data set leaves it (uploaded, submitted, claimed and
    finished through the real services; its files made by `make_adapter`)."""
    import json

    from lora_engine.adapters.digest import adapter_files_digest
    from orchestrator.registry.models import new_id
    from orchestrator.services.adapters import model_names_of, new_adapter_path
    from orchestrator.services.datasets import upload_dataset
    from orchestrator.services.jobs import submit_job
    from orchestrator.services.leases import AdapterRecord, claim_job, finish_job_success

    rows = top / "chat.jsonl"
    rows.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(4)))
    dataset = upload_dataset(session, tenant, rows, kind=None, settings=settings)
    job = submit_job(session, tenant, {"task": "custom-generation", "dataset": dataset.id,
                                       "base_model": "tiny-llama", "max_steps": 1}, settings=settings)
    assert claim_job(session, job.id, "test-worker", 60) is not None
    adapter_id = new_id()
    folder = new_adapter_path(settings, job.tenant_id, adapter_id)
    folder.parent.mkdir(parents=True, exist_ok=True)
    make_adapter(folder, "tiny-llama", "custom-generation", 5)
    sha, size = adapter_files_digest(folder)
    row = finish_job_success(session, job.id, "test-worker", AdapterRecord(
        id=adapter_id, path=str(folder), sha256=sha, bytes=size, trainable_params=1, total_params=2), {})
    return model_names_of(session, [row])[row.id], row.path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    from orchestrator.config import load_settings
    from orchestrator.registry import db
    from orchestrator.services.keys import create_key
    from orchestrator.services.tenants import create_tenant

    top = tmp_path_factory.mktemp("serve")
    home = top / "home"
    home.mkdir()
    made = {"gen_a": ("acme", "tiny-llama", "e2e", 1), "gen_b": ("acme", "tiny-llama", "e2e", 2),
            "cls": ("acme", "tiny-bert", "sst2", 3), "theirs": ("other", "tiny-llama", "e2e", 4),
            "score": ("acme", "tiny-bert", "stsb", 6)}
    folders = {what: make_adapter(top / "made" / what, base, task, seed)
               for what, (_, base, task, seed) in made.items()}
    metrics_port = free_port()
    env = api_env(home, {"LORAFLEET_SERVE_METRICS_PORT": str(metrics_port),
                         "LORAFLEET_SERVE_BATCH_WINDOW_MS": "30",  # concurrent requests meet
                         "LORAFLEET_SERVE_REGISTRY_CACHE_S": str(REGISTRY_CACHE_S),
                         "LORAFLEET_SERVE_USAGE_FLUSH_MS": "50"})
    settings = load_settings(env)
    db.ensure_schema(settings)
    keys, names, paths = {}, {}, {}
    with db.session_scope(settings) as s:
        for tenant in ("acme", "other"):
            create_tenant(s, tenant)
            keys[tenant] = create_key(s, tenant)[1]
        for what, (tenant, *_rest) in made.items():
            names[what], paths[what] = register(s, tenant, folders[what], settings)
        names["chat"], paths["chat"] = trained_on_chat(s, settings, "acme", top)
    # Room for one of the two generation adapters (of equal size), not for both.
    sizes = {what: sum(f.stat().st_size for f in Path(p).iterdir()) for what, p in paths.items()}
    env["LORAFLEET_SERVE_ADAPTER_CACHE_BYTES"] = str(sizes["gen_a"] + sizes["gen_b"] // 2)
    server = start_serve(env, home / "serve.log")
    try:
        yield Served(server, f"http://127.0.0.1:{metrics_port}/metrics", keys, names, paths)
    finally:
        server.stop()
        db.forget_engine(settings.database_url)


def start_serve(env: dict[str, str], log_path: Path) -> ApiProcess:
    """`lorafleet serve` with `env`, once it answers /healthz."""
    return start_api(env, log_path=log_path, command=("serve",), timeout_s=START_TIMEOUT_S)


@pytest.fixture(scope="module")
def predicted(served: Served) -> dict[str, object]:
    """What `adapter predict` (lora_engine.predict, greedy) says for the adapters."""
    from lora_engine.generate import DecodeSettings
    from lora_engine.predict import load_for_inference

    greedy = DecodeSettings(num_beams=1, length_penalty=1.0, no_repeat_ngram_size=0, max_new_tokens=TOKENS)
    # tiny-llama's tokenizer has no chat template: chat rows trained as lora_engine.data.chat's
    # plain prompt, so the server must render a conversation the same way.
    plain = "system: be brief\nuser: hello there\nassistant: "
    chat = load_for_inference(served.paths["chat"])
    return {"gen_a": load_for_inference(served.paths["gen_a"]).generate([MR], decode=greedy)[0],
            "chat": chat.generate([plain], decode=greedy, as_prompts=True)[0],
            "cls": load_for_inference(served.paths["cls"]).classify(["a fine film", "dull and long"])}


def test_completions_greedy_equal_adapter_predict(served: Served, predicted):
    client = served.client()
    out = client.completions.create(model=served.names["gen_a"], prompt=MR, max_tokens=TOKENS, temperature=0)
    assert out.choices[0].text == predicted["gen_a"]
    assert out.choices[0].text  # a random tiny model still says something
    assert out.usage.completion_tokens <= TOKENS and out.usage.prompt_tokens > 0
    chat = client.chat.completions.create(model=served.names["gen_a"], max_tokens=TOKENS, temperature=0,
                                          messages=[{"role": "system", "content": "be brief"},
                                                    {"role": "user", "content": MR}])
    # A prompt/completion (E2E) adapter reads the last user message through its own template.
    assert chat.choices[0].message.content == predicted["gen_a"]
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length")


def test_a_chat_trained_adapter_reads_the_whole_conversation(served: Served, predicted):
    chat = served.client().chat.completions.create(
        model=served.names["chat"], max_tokens=TOKENS, temperature=0,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}])
    assert chat.choices[0].message.content == predicted["chat"]
    assert chat.choices[0].message.content


def test_streams_join_to_the_whole_answer(served: Served, predicted):
    client = served.client()
    stream = client.chat.completions.create(model=served.names["gen_a"], max_tokens=TOKENS, temperature=0,
                                            messages=[{"role": "user", "content": MR}], stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == predicted["gen_a"]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    pieces = client.completions.create(model=served.names["gen_a"], prompt=MR, max_tokens=TOKENS,
                                       temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in pieces) == predicted["gen_a"]


def test_sampling_seed_n_and_stop(served: Served, predicted):
    client = served.client()
    ask = {"model": served.names["gen_a"], "prompt": MR, "max_tokens": TOKENS, "temperature": 1.5, "seed": 7}
    first = client.completions.create(n=2, **ask)
    again = client.completions.create(n=2, **ask)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # seeded: reproducible
    assert [c.index for c in first.choices] == [0, 1]
    whole = predicted["gen_a"]
    assert len(whole) >= 4
    stop = whole[2:4]
    cut = client.completions.create(model=served.names["gen_a"], prompt=MR, max_tokens=TOKENS,
                                    temperature=0, stop=[stop])
    assert cut.choices[0].text == whole[:whole.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_classify(served: Served, predicted):
    from lora_engine.predict import load_for_inference

    texts = ["a fine film", "dull and long"]
    answer = served.post("/v1/classify", {"model": served.names["cls"], "input": texts})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [row["index"] for row in body["data"]] == [0, 1]
    for row, expected in zip(body["data"], predicted["cls"], strict=True):
        assert row["label"] == expected.label and row["label"] in ("negative", "positive")
        assert row["probs"] == pytest.approx(list(expected.probabilities), abs=1e-5)
    assert body["usage"]["prompt_tokens"] > 0
    # A regression adapter (served by its own lora_engine.predict model) gives its score.
    scored = served.post("/v1/classify", {"model": served.names["score"], "input": texts}).json()["data"]
    expected = load_for_inference(served.paths["score"]).classify(texts)
    assert [row["value"] for row in scored] == pytest.approx([p.value for p in expected], abs=1e-5)
    one = served.post("/v1/classify", {"model": served.names["cls"], "input": "a fine film"}).json()
    assert len(one["data"]) == 1 and one["data"][0]["label"] == predicted["cls"][0].label


def test_a_base_model_answers_alone(served: Served):
    from lora_engine.device import pick_device
    from lora_engine.generate import DecodeSettings, generate_texts
    from lora_engine.models import load_base_model

    model, tok = load_base_model("tiny-llama", "generation")
    greedy = DecodeSettings(num_beams=1, length_penalty=1.0, no_repeat_ngram_size=0, max_new_tokens=TOKENS)
    prompt_ids = [tok(MR, add_special_tokens=False)["input_ids"]]
    expected = generate_texts(model.eval(), prompt_ids, tokenizer=tok, device=pick_device(),
                              settings=greedy)[0]
    out = served.client().completions.create(model="tiny-llama", prompt=MR, max_tokens=TOKENS, temperature=0)
    assert out.choices[0].text == expected
    refused = served.post("/v1/classify", {"model": "tiny-bert", "input": "x"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
    with pytest.raises(openai.BadRequestError):  # an encoder generates nothing
        served.client().completions.create(model="tiny-bert", prompt="x", max_tokens=2)


def test_models_lists_only_own_adapters(served: Served):
    ids = {m.id for m in served.client().models.list()}
    assert {served.names["gen_a"], served.names["gen_b"], served.names["cls"]} <= ids
    assert served.names["theirs"] not in ids
    theirs = {m.id for m in served.client("other").models.list() if m.id.startswith("ft:")}
    assert theirs == {served.names["theirs"]}
    assert "tiny-llama" in ids  # the bases a tenant may use


def error_of(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_another_tenants_adapter_and_unknown_models_are_404(served: Served):
    client = served.client()
    unknown = f"ft:tiny-llama:acme:e2e:{uuid.uuid4()}"
    for model in (served.names["theirs"], unknown, "gpt-4o", "ft:nonsense"):
        with pytest.raises(openai.NotFoundError) as caught:
            client.completions.create(model=model, prompt=MR, max_tokens=2)
        error = error_of(caught.value)
        assert error["code"] == "model_not_found" and error["param"] == "model"
    answer = served.post("/v1/classify", {"model": served.names["theirs"], "input": "x"})
    assert answer.status_code == 404
    # The other tenant reaches its own adapter with its own key.
    assert served.client("other").completions.create(model=served.names["theirs"], prompt=MR, max_tokens=2)


def test_bad_parameters_are_400_in_openais_shape(served: Served):
    client = served.client()
    model = served.names["gen_a"]
    cases = [({"temperature": 5}, "temperature"), ({"n": 0}, "n"), ({"top_p": 0}, "top_p"),
             ({"max_tokens": 100_000}, "max_tokens"), ({"extra_body": {"best_of": 3}}, "best_of"),
             ({"stop": ["a", "b", "c", "d", "e"]}, "stop")]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model=model, prompt=MR, **extra)
        error = error_of(caught.value)
        assert param in (error["param"] or "") + error["message"], error
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "tool", "content": "x"}])
    assert error_of(caught.value)["param"].startswith("messages")
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=model, prompt="word " * 600, max_tokens=TOKENS)
    assert "context" in error_of(caught.value)["message"]
    wrong_kind = served.post("/v1/classify", {"model": model, "input": "x"})
    assert wrong_kind.status_code == 400 and wrong_kind.json()["error"]["code"] == "wrong_model_kind"
    assert served.post("/v1/classify", {"model": served.names["cls"], "input": []}).status_code == 400
    unauthenticated = httpx.post(served.server.base_url + "/v1/completions",
                                 json={"model": model, "prompt": "x"})
    assert unauthenticated.status_code == 401


def test_concurrent_requests_answer_as_alone(served: Served, predicted):
    """Requests for several adapters at once (one engine batch when they meet in the window) each
    get the answer they get alone; a neighbour's error (a prompt longer than the model's context)
    is its own."""
    from concurrent.futures import ThreadPoolExecutor

    client = served.client()
    ask = {"prompt": MR, "max_tokens": TOKENS, "temperature": 0}
    alone = {what: client.completions.create(model=served.names[what], **ask).choices[0].text
             for what in ("gen_a", "chat")}

    def one(what: str) -> str:
        if what == "long":
            try:
                client.completions.create(model=served.names["gen_a"], prompt="word " * 600,
                                          max_tokens=TOKENS)
            except openai.BadRequestError as exc:
                return exc.response.json()["error"]["code"] or "400"
            return "answered"
        return client.completions.create(model=served.names[what], **ask).choices[0].text

    wanted = ["gen_a", "chat", "long", "gen_a", "chat"]
    with ThreadPoolExecutor(len(wanted)) as pool:
        got = list(pool.map(one, wanted))
    assert alone["gen_a"] == predicted["gen_a"]
    assert got[:2] + got[3:] == [alone["gen_a"], alone["chat"]] * 2
    assert got[2] not in ("answered", alone["gen_a"])


def test_lru_evicts_by_bytes_and_reloads(served: Served):
    client = served.client()
    ask = {"prompt": MR, "max_tokens": 2, "temperature": 0}
    client.completions.create(model=served.names["gen_a"], **ask)
    loads, evictions = (served.metric("lorafleet_serve_adapter_loads_total"),
                        served.metric("lorafleet_serve_adapter_evictions_total"))
    client.completions.create(model=served.names["gen_a"], **ask)  # resident: no load
    assert served.metric("lorafleet_serve_adapter_loads_total") == loads
    first_b = client.completions.create(model=served.names["gen_b"], **ask)  # a and b do not both fit
    assert served.metric("lorafleet_serve_adapter_loads_total") == loads + 1
    assert served.metric("lorafleet_serve_adapter_evictions_total") >= evictions + 1
    client.completions.create(model=served.names["gen_a"], **ask)  # evicted: loaded again
    assert served.metric("lorafleet_serve_adapter_loads_total") == loads + 2
    assert served.metric("lorafleet_serve_adapter_cache_bytes") <= int(
        served.server.env["LORAFLEET_SERVE_ADAPTER_CACHE_BYTES"])
    again_b = client.completions.create(model=served.names["gen_b"], **ask)  # reloaded, same answer
    assert again_b.choices[0].text == first_b.choices[0].text


def test_usage_recorded_per_tenant(served: Served):
    from orchestrator.services.inference import inference_totals
    from orchestrator.services.tenants import get_tenant

    # Rows of earlier tests still decoding (a stream read in part) are recorded when they end, and
    # usage is written in batches: count from a registry where nothing is pending.
    deadline = time.monotonic() + 60
    while served.metric(DECODING) != 0:
        assert time.monotonic() < deadline, "an earlier request never ended"
        time.sleep(0.05)
    time.sleep(0.5)  # ten flush periods (LORAFLEET_SERVE_USAGE_FLUSH_MS is 50 here)
    with served.server.session() as s:
        before = inference_totals(s, "acme")
        acme = get_tenant(s, "acme").id
    out = served.client().completions.create(model=served.names["gen_a"], prompt=MR, max_tokens=3,
                                             temperature=0)
    was = before.get(acme, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "device_seconds": 0})
    deadline = time.monotonic() + 60  # written with the server's next batch (LORAFLEET_SERVE_USAGE_FLUSH_MS)
    while True:
        with served.server.session() as s:
            after = inference_totals(s, "acme").get(acme, was)
        if after["requests"] > was["requests"]:
            break
        assert time.monotonic() < deadline, "the request's usage was not written"
        time.sleep(0.05)
    assert after["requests"] == was["requests"] + 1
    assert after["prompt_tokens"] == was["prompt_tokens"] + out.usage.prompt_tokens
    assert after["completion_tokens"] == was["completion_tokens"] + out.usage.completion_tokens
    assert after["device_seconds"] > was["device_seconds"]


def test_a_request_arriving_mid_decode_joins_the_batch_and_streams_come_as_decoded(served: Served, predicted):
    """A long streamed generation is decoding (its first chunk is in the client's hands while the
    server reports its row in the batch); a completion and a classify sent meanwhile are served
    between its decode steps (counted as joins), the completion as greedy alone says."""
    client = served.client()
    assert served.metric(DECODING) == 0
    joined = {kind: served.metric(JOINED % kind, 0.0) for kind in ("generate", "classify")}
    long = client.completions.create(model="tiny-llama", prompt=MR, max_tokens=LONG, temperature=0,
                                     stream=True)
    chunks = iter(long)
    first = next(chunks)
    assert first.choices[0].text and first.choices[0].finish_reason is None
    assert served.metric(DECODING) >= 1  # the first piece came before its generation ended
    joining = client.completions.create(model=served.names["gen_a"], prompt=MR, max_tokens=TOKENS,
                                        temperature=0)
    assert joining.choices[0].text == predicted["gen_a"]
    texts = ["a fine film", "dull and long"]
    labels = served.post("/v1/classify", {"model": served.names["cls"], "input": texts})
    assert [row["label"] for row in labels.json()["data"]] == [p.label for p in predicted["cls"]]
    assert served.metric(JOINED % "generate", 0.0) == joined["generate"] + 1
    assert served.metric(JOINED % "classify", 0.0) == joined["classify"] + 1
    more = [next(chunks) for _ in range(10)]
    assert all(c.choices[0].text and c.choices[0].finish_reason is None for c in more)  # token by token
    long.close()  # the rest is not wanted (its row leaves: the next test)
    served.wait_for(DECODING, lambda v: v == 0, "the long row left")


def test_a_stream_whose_client_goes_away_frees_its_row(served: Served):
    from orchestrator.services.inference import inference_totals

    with served.server.session() as s:  # its own tenant: no other test's stream is charged there now
        before = sum(t["requests"] for t in inference_totals(s, "other").values())
    client = served.client("other")
    cancelled = served.metric("lorafleet_serve_rows_cancelled_total", 0.0)
    stream = client.completions.create(model="tiny-llama", prompt=MR, max_tokens=LONG, temperature=0,
                                       stream=True, n=2)
    assert next(iter(stream)).choices[0].text
    assert served.metric(DECODING) == 2  # n=2: two rows of the batch
    stream.close()
    served.wait_for("lorafleet_serve_rows_cancelled_total", lambda v: v == cancelled + 2,
                    "the rows were dropped")
    assert served.metric(DECODING) == 0
    deadline = time.monotonic() + 60  # what it generated is still charged (after the stream ended)
    while True:
        with served.server.session() as s:
            if sum(t["requests"] for t in inference_totals(s, "other").values()) == before + 1:
                break
        assert time.monotonic() < deadline, "the cancelled stream's usage was not recorded"
        time.sleep(0.1)


def test_a_stop_string_ends_its_row_when_it_appears(served: Served, predicted):
    client = served.client()
    whole = predicted["gen_a"]
    full = client.completions.create(model=served.names["gen_a"], prompt=MR, max_tokens=TOKENS, temperature=0)
    assert full.choices[0].finish_reason == ("length" if full.usage.completion_tokens == TOKENS else "stop")
    stop = whole[2:4]
    cut = client.completions.create(model=served.names["gen_a"], prompt=MR, max_tokens=TOKENS, temperature=0,
                                    stop=[stop, "never said"], n=2)
    for choice in cut.choices:
        assert choice.text == whole[:whole.find(stop)] and choice.finish_reason == "stop"
    # The rows left when the stop appeared: fewer tokens generated than the whole answer.
    assert cut.usage.completion_tokens < 2 * full.usage.completion_tokens
    streamed = list(client.chat.completions.create(model=served.names["gen_a"], max_tokens=TOKENS,
                                                   temperature=0, stop=stop, stream=True,
                                                   messages=[{"role": "user", "content": MR}]))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == whole[:whole.find(stop)]
    assert [c.choices[0].finish_reason for c in streamed if c.choices[0].finish_reason] == ["stop"]
    unstopped = client.completions.create(model=served.names["gen_a"], prompt=MR, max_tokens=TOKENS,
                                          temperature=0, stop="never said")
    assert unstopped.choices[0].text == whole
    assert unstopped.choices[0].finish_reason == full.choices[0].finish_reason


def test_a_revoked_key_is_refused_within_the_registry_cache_time(served: Served):
    """The server trusts a verified key REGISTRY_CACHE_S seconds (one registry check per key per
    that time, not per request): once that has passed since its revocation, it is refused."""
    from orchestrator.services.keys import create_key, revoke_key

    with served.server.session() as s:
        row, key = create_key(s, "acme", name="revoked-soon")
    ask = {"model": served.names["cls"], "input": "a fine film"}
    url, headers = served.server.base_url + "/v1/classify", {"Authorization": f"Bearer {key}"}
    assert httpx.post(url, json=ask, headers=headers, timeout=60).is_success
    with served.server.session() as s:
        revoke_key(s, row.id)
    time.sleep(REGISTRY_CACHE_S)
    refused = httpx.post(url, json=ask, headers=headers, timeout=60)
    assert refused.status_code == 401, refused.text
    assert "revoked" in refused.json()["error"]["message"]


def test_a_deleted_adapter_is_not_found_from_the_next_request(served: Served):
    """The server keeps which adapter a name is; `adapter delete` removes its folder, which the
    server looks for before it answers from memory: 404 at once, not after the cache time."""
    from orchestrator.services.adapters import delete_adapter
    from orchestrator.services.model_names import parse_model_name

    top = Path(served.server.env["LORAFLEET_HOME"]).parent  # the fixture's data root
    folder = make_adapter(top / "made" / "doomed", "tiny-bert", "sst2", 7)
    with served.server.session() as s:
        name, _ = register(s, "acme", folder, served.server.settings)
    assert served.post("/v1/classify", {"model": name, "input": "a fine film"}).status_code == 200
    with served.server.session() as s:
        delete_adapter(s, parse_model_name(name), "acme", settings=served.server.settings)
    gone = served.post("/v1/classify", {"model": name, "input": "a fine film"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


def test_usage_waiting_to_be_written_is_written_at_a_clean_stop(served: Served):
    """A second server whose usage writer waits (a minute, 100,000 rows): its requests' rows are
    not in the registry while it runs, and all are there, tokens and all, after SIGTERM."""
    from sqlalchemy import func, select

    from orchestrator.registry.models import InferenceUsage

    def rows() -> tuple[int, int]:
        with served.server.session() as s:
            u = InferenceUsage
            count, tokens = s.execute(select(func.count(), func.coalesce(func.sum(u.prompt_tokens), 0))
                                      .where(u.route == "classify")).one()
        return int(count), int(tokens)

    env = {k: v for k, v in served.server.env.items() if k != "LORAFLEET_SERVE_METRICS_PORT"}
    env.update({"LORAFLEET_SERVE_USAGE_FLUSH_MS": "60000", "LORAFLEET_SERVE_USAGE_FLUSH_ROWS": "100000"})
    home = Path(env["LORAFLEET_HOME"])
    server = start_serve(env, home / "serve-stop.log")
    try:
        before = rows()
        answers = [httpx.post(server.base_url + "/v1/classify", timeout=60,
                              json={"model": served.names["cls"], "input": [f"text {i}"] * (1 + i % 3)},
                              headers={"Authorization": f"Bearer {served.keys['acme']}"})
                   for i in range(6)]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert rows() == before  # waiting in the server: no transaction per request
    finally:
        server.stop()  # SIGTERM: uvicorn's graceful stop, then the app's shutdown
    assert "Application shutdown complete" in server.log(), server.log()[-4000:]
    tokens = sum(a.json()["usage"]["prompt_tokens"] for a in answers)
    assert rows() == (before[0] + 6, before[1] + tokens)
