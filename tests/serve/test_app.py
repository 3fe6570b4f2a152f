"""The native API over real HTTP: answers equal ``Fusion.generate`` on the same checkpoint, streamed or not;
models, health, metrics; the API key; 429 and a client leaving mid-stream, driven by the scheduler's step gate."""

import json
import socket

import pytest

from fusion.document import Document
from fusion.inference.generate import Generation
from fusion.serve.app import create_app

from .conftest import LONG, PROMPT, from_uri, live_server, picture, png_uri, sse_events, wait_for


def test_text_equals_fusion_generate_streamed_or_not(live, reference):
    body = dict(prompt=[{"text": PROMPT}], mode="text", max_new_tokens=24, seed=3, return_ids=True)
    record = Generation()
    expected = reference.generate(PROMPT, mode="text", max_new_tokens=24, seed=3, record=record)
    whole = live.generate(**body).json()
    assert whole["ids"] == record.ids
    assert whole["documents"] == [expected.to_json()]
    prompt_tokens = len(reference.tokenizer.encode(Document.of(PROMPT), bos=True, eos=False))
    assert whole["usage"] == {"prompt_tokens": prompt_tokens, "generated_tokens": len(record.ids[0]), "images": 0,
                              "forward_passes": record.passes}
    assert whole["finish_reasons"] == ["stop" if len(record.ids[0]) < 24 else "length"]

    events = live.stream(**body)
    assert [kind for kind, _ in events[:-1]] == ["text"] * (len(events) - 1) and events[-1][0] == "done"
    assert "".join(data["text"] for _, data in events[:-1]) == "".join(expected.texts)
    assert events[-1][1] == {k: whole[k] for k in ("finish_reasons", "usage", "ids")}


def test_defaults_come_from_the_checkpoint(live, reference):
    """No knobs in the request: the checkpoint's generation_config.json (temperature 0.8, top-k 50) applies."""
    record = Generation()
    reference.generate(PROMPT, mode="text", max_new_tokens=12, seed=9, record=record)
    assert live.generate(prompt=PROMPT, mode="text", max_new_tokens=12, seed=9, return_ids=True).json()["ids"] \
        == record.ids
    assert "ids" not in live.generate(prompt=PROMPT, mode="text", max_new_tokens=2).json()  # only when asked


def test_an_image_streams_as_the_png_the_whole_answer_holds(live, reference):
    record = Generation()
    expected = reference.generate(PROMPT, mode="image", seed=5, record=record)
    whole = live.generate(prompt=PROMPT, mode="image", seed=5, return_ids=True).json()
    assert whole["ids"] == record.ids and whole["documents"] == [expected.to_json()]
    assert whole["usage"]["images"] == 1 and whole["finish_reasons"] == ["stop"]

    events = live.stream(prompt=PROMPT, mode="image", seed=5)
    images = [data for kind, data in events if kind == "image"]
    assert len(images) == 1 and images[0]["row"] == 0 and events[-1][0] == "done"
    streamed = from_uri(images[0]["image"])
    returned = from_uri(whole["documents"][0]["segments"][-1]["image"])
    assert streamed.size == (32, 32) and streamed.tobytes() == returned.tobytes()
    assert streamed.tobytes() == expected.images[0].tobytes()


def test_an_image_prompt_and_two_samples(live, reference):
    pic = picture()
    record = Generation()
    expected = reference.generate(Document.of(pic, "a"), mode="text", max_new_tokens=8, num_return_sequences=2,
                                  seed=7, record=record)
    whole = live.generate(prompt=[{"image": png_uri(pic)}, {"text": "a"}], mode="text", max_new_tokens=8,
                          num_return_sequences=2, seed=7, return_ids=True).json()
    assert whole["ids"] == record.ids and len(whole["finish_reasons"]) == 2
    assert whole["documents"] == [d.to_json() for d in expected]
    rows = {data["row"] for kind, data in live.stream(prompt=[{"image": png_uri(pic)}, {"text": "a"}], mode="text",
                                                      max_new_tokens=8, num_return_sequences=2, seed=7)
            if kind == "text"}
    assert rows <= {0, 1}


def test_models_health_and_the_page(live):
    models = live.client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert live.client.get("/health").json() == {"status": "ok", "model": "tiny"}
    page = live.client.get("/")
    assert page.status_code == 200 and "v1/generate" in page.text and "<script" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: everything is in the page
    assert live.client.get("/docs").status_code == 404 and live.client.get("/nowhere").json()["error"]["message"]


def test_metrics_count_requests_tokens_and_latencies(live):
    before = live.scrape()
    usage = live.generate(prompt=PROMPT, mode="image", seed=1).json()["usage"]
    assert live.generate(prompt=PROMPT, temperature=-1).status_code == 400
    after = live.scrape()

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("fusion_requests_total", endpoint="/v1/generate", outcome="done") == 1
    assert moved("fusion_requests_total", endpoint="/v1/generate", outcome="invalid") == 1
    assert moved("fusion_generated_tokens_total") == usage["generated_tokens"] > 0
    assert moved("fusion_generated_images_total") == 1
    assert moved("fusion_time_to_first_token_seconds_count") == 1
    assert moved("fusion_time_to_first_image_seconds_count") == 1
    assert moved("fusion_scheduler_jobs_total", outcome="stop") == 1
    assert after[("fusion_queue_depth", ())] == 0 and after[("fusion_batch_occupancy", ())] == 0
    assert after[("fusion_max_rows", ())] == 4


def test_each_app_has_its_own_registry(live):
    a, b = (create_app(live.scheduler, model_name=name) for name in "ab")  # a shared registry would clash here
    assert a.state.metrics.registry is not b.state.metrics.registry
    assert b"fusion_requests" in a.state.metrics.render()


def test_an_api_key_guards_all_but_health_and_the_page(checkpoint):
    key = {"Authorization": "Bearer s3cret"}
    with live_server(checkpoint, api_key="s3cret") as live:
        c = live.client
        for method, path, body in [("GET", "/v1/models", None), ("GET", "/metrics", None),
                                   ("POST", "/v1/generate", {"prompt": "a", "max_new_tokens": 2}),
                                   ("POST", "/v1/chat/completions",
                                    {"messages": [{"role": "user", "content": "a"}], "max_tokens": 2})]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, headers)
                assert r.json()["error"]["type"] == "authentication_error"
            assert c.request(method, path, json=body, headers=key).status_code == 200, path
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200


def test_a_full_queue_answers_429_with_retry_after(checkpoint):
    """One row (--max-batch 1), one queue place: the first job holds the row (the gate keeps it running), the
    second waits, the third is refused."""
    body = dict(prompt=PROMPT, mode="text", max_new_tokens=4, seed=0)
    with live_server(checkpoint, max_batch=1, max_queue=1) as live:
        stats, gate = live.scheduler.stats, live.scheduler.gate
        gate.hold()
        with live.client.stream("POST", "/v1/generate", json={**body, "stream": True}) as first:
            wait_for(lambda: stats.busy_rows == 1 and stats.queued == 0, what="the first job running")
            with live.client.stream("POST", "/v1/generate", json={**body, "stream": True}) as second:
                assert stats.queued == 1
                third = live.generate(**body)
                assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
                assert third.json()["error"]["type"] == "queue_full"
                gate.release()
                assert list(sse_events(second))[-1][0] == "done"
            assert list(sse_events(first))[-1][0] == "done"
        assert live.generate(**body).status_code == 200
        assert live.scrape()[("fusion_requests_total", (("endpoint", "/v1/generate"), ("outcome", "queue_full")))] == 1


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not streamed"])
def test_a_client_that_leaves_has_its_job_cancelled_within_one_step(checkpoint, long_job_runs_to_its_budget, stream):
    assert long_job_runs_to_its_budget
    cancelled = ("fusion_requests_total", (("endpoint", "/v1/generate"), ("outcome", "cancelled")))
    body = json.dumps({**LONG, "stream": stream}).encode()
    with live_server(checkpoint) as live:
        stats, gate = live.scheduler.stats, live.scheduler.gate
        gate.hold()
        host, port = live.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=60) as client:
            client.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: stats.busy_rows == 1, what="the job admitted")
            if stream:
                gate.advance(1)
                received = b""
                while b"event: text" not in received:  # the first event came
                    chunk = client.recv(65536)
                    assert chunk, received
                    received += chunk
        # the connection is closed mid-answer; the app sees it and cancels the job
        wait_for(lambda: live.scrape().get(cancelled, 0) == 1, what="the app counting the request cancelled")
        assert stats.busy_rows == 1
        gate.advance(1)  # one step frees the rows
        assert stats.outcomes.get("cancelled") == 1 and stats.busy_rows == 0
        gate.release()
        assert live.generate(prompt=PROMPT, mode="text", max_new_tokens=2).status_code == 200


def test_a_failing_job_ends_its_request_only(live):
    """Logits turned NaN: that request gets an error (an event when streamed, a 500 when not); the next is served."""
    hook = live.scheduler.fusion.model.lm_head.register_forward_hook(lambda m, i, out: out * float("nan"))
    try:
        events = live.stream(prompt=PROMPT, mode="text", max_new_tokens=4)
        whole = live.generate(prompt=PROMPT, mode="text", max_new_tokens=4)
    finally:
        hook.remove()
    assert events[-1][0] == "error" and events[-1][1]["message"]
    assert whole.status_code == 500 and whole.json()["error"]["type"] == "server_error"
    assert live.generate(prompt=PROMPT, mode="text", max_new_tokens=4).status_code == 200
    assert live.scrape()[("fusion_requests_total", (("endpoint", "/v1/generate"), ("outcome", "error")))] == 2
