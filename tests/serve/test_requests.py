"""Bad requests to /v1/generate: each gets a 4xx JSON error naming its field, and the server goes on serving.
Images come only as data URIs: paths (even of a real PNG), file:// and http:// are refused without being read."""

import base64
import io
import socket

import pytest
from PIL import Image as PILImage

from .conftest import MAX_BATCH, PROMPT, png_claiming, png_uri

GOOD = dict(prompt=PROMPT, mode="text", max_new_tokens=2)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD_BODIES = {
    "malformed JSON": (b'{"prompt": [', None, "invalid_json"),
    "not an object": (b"[1, 2]", None, "invalid_json"),
    "NaN is not JSON": (b'{"prompt": "a", "temperature": NaN}', None, "invalid_json"),
    "not UTF-8": (b'{"prompt": "\xff"}', None, "invalid_json"),
    "a lone surrogate": (b'{"prompt": "\\ud800"}', "prompt[0]", "invalid_value"),
    "no prompt": ({"mode": "text"}, "prompt", "missing_field"),
    "an empty prompt": ({"prompt": []}, "prompt", "wrong_type"),
    "unknown field": ({**GOOD, "max_length": 5}, "max_length", "unknown_field"),
    "temperature as a string": ({**GOOD, "temperature": "hot"}, "temperature", "wrong_type"),
    "max_new_tokens as a float": ({**GOOD, "max_new_tokens": 1.5}, "max_new_tokens", "wrong_type"),
    "do_sample as 1": ({**GOOD, "do_sample": 1}, "do_sample", "wrong_type"),
    "top_k as true": ({**GOOD, "top_k": True}, "top_k", "wrong_type"),
    "stop_strings of numbers": ({**GOOD, "stop_strings": [1]}, "stop_strings", "wrong_type"),
    "stream as a string": ({**GOOD, "stream": "yes"}, "stream", "wrong_type"),
    "return_ids as null": ({**GOOD, "return_ids": None}, "return_ids", "wrong_type"),
    "seed as a string": ({**GOOD, "seed": "1"}, "seed", "wrong_type"),
    "prompt as a number": ({"prompt": 5}, "prompt", "wrong_type"),
    "a segment of another kind": ({"prompt": [{"video": "x"}]}, "prompt[0]", "wrong_type"),
    "a segment with two kinds": ({"prompt": [{"text": "a", "image": "b"}]}, "prompt[0]", "wrong_type"),
    "text as a number": ({"prompt": [{"text": 1}]}, "prompt[0]", "wrong_type"),
    "temperature < 0": ({**GOOD, "temperature": -1}, "temperature", "invalid_value"),
    "top_p = 0": ({**GOOD, "top_p": 0}, "top_p", "invalid_value"),
    "top_k < 0": ({**GOOD, "top_k": -1}, "top_k", "invalid_value"),
    "an unknown mode": ({**GOOD, "mode": "audio"}, "mode", "invalid_value"),
    "no samples": ({**GOOD, "num_return_sequences": 0}, "num_return_sequences", "invalid_value"),
    "a window of 1": ({**GOOD, "speculative_window": 1}, "speculative_window", "invalid_value"),
    "a negative seed": ({**GOOD, "seed": -1}, "seed", "invalid_value"),
    "more rows than --max-batch": ({**GOOD, "num_return_sequences": MAX_BATCH + 1}, None, "invalid_request_error"),
    "guidance copies past --max-batch": ({"prompt": PROMPT, "mode": "image", "guidance_scale": 3.0,
                                          "num_return_sequences": 3}, None, "invalid_request_error"),
    "a prompt longer than the context": ({**GOOD, "prompt": "a large red circle " * 1000}, None,
                                         "invalid_request_error"),
    "a budget past the context": ({**GOOD, "max_new_tokens": 5000}, None, "invalid_request_error"),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_a_bad_body_gets_a_4xx_naming_the_field_and_the_server_goes_on(live, case):
    body, param, kind = BAD_BODIES[case]
    r = live.client.post("/v1/generate", **({"content": body} if isinstance(body, bytes) else {"json": body}))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param"} and error["message"]
    assert (error["param"], error["type"]) == (param, kind), error
    assert live.generate(**GOOD).status_code == 200


def test_an_unknown_hf_name_gets_a_hint(live):
    assert "use max_new_tokens" in live.generate(prompt="a", max_length=3).json()["error"]["message"]


@pytest.fixture(scope="module")
def listener():
    """A port that would see any connection the server tried to make for a client."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    yield sock
    sock.close()


def bad_images(tmp_path, listener) -> dict[str, tuple[str, str]]:
    real = tmp_path / "real.png"
    real.write_bytes(base64.b64decode(png_uri_of_a_dot().split(",", 1)[1]))
    port = listener.getsockname()[1]
    return {
        "/etc/passwd": ("/etc/passwd", "invalid_image"),
        "file:///etc/passwd": ("file:///etc/passwd", "invalid_image"),
        "the path of a real PNG": (str(real), "invalid_image"),
        "file:// of a real PNG": (real.as_uri(), "invalid_image"),
        "http://": (f"http://127.0.0.1:{port}/x.png", "invalid_image"),
        "https://": (f"https://127.0.0.1:{port}/x.png", "invalid_image"),
        "not base64-encoded": ("data:image/png,abc", "invalid_image"),
        "invalid base64": ("data:image/png;base64,@@@@", "invalid_image"),
        "not an image": (f"data:image/png;base64,{b64(b'not an image at all')}", "invalid_image"),
        "text/plain": (f"data:text/plain;base64,{b64(b'hello')}", "invalid_image"),
        "an SVG": (f"data:image/svg+xml;base64,{b64(b'<svg/>')}", "invalid_image"),
        "a truncated PNG": (f"data:image/png;base64,{b64(png_claiming(32, 32))}", "invalid_image"),
        "a bomb: 20000 x 20000": (f"data:image/png;base64,{b64(png_claiming(20000, 20000))}", "image_too_large"),
        "over --max-image-pixels": (f"data:image/png;base64,{b64(png_claiming(5000, 4000))}", "image_too_large"),
    }


def png_uri_of_a_dot() -> str:
    return png_uri(PILImage.new("RGB", (32, 32), (255, 0, 0)))


def test_images_come_only_as_data_uris_within_the_pixel_limit(live, tmp_path, listener):
    for case, (uri, kind) in bad_images(tmp_path, listener).items():
        r = live.generate(prompt=[{"image": uri}, {"text": "a"}], mode="text", max_new_tokens=2)
        assert r.status_code == 400, (case, r.text)
        error = r.json()["error"]
        assert (error["param"], error["type"]) == ("prompt[0]", kind), (case, error)
        if kind == "image_too_large":
            assert "pixels" in error["message"] or "too large" in error["message"], error
        assert live.generate(**GOOD).status_code == 200
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected: the URLs were refused unread
    dot = live.generate(prompt=[{"image": png_uri_of_a_dot()}, {"text": "a"}], mode="text", max_new_tokens=2)
    assert dot.status_code == 200  # while the same image inline is fine
    jpeg = live.generate(prompt=[{"image": "data:image/jpeg;base64," + jpeg_b64()}], mode="text", max_new_tokens=2)
    assert jpeg.status_code == 200


def jpeg_b64() -> str:
    buf = io.BytesIO()
    PILImage.new("RGB", (16, 16), (0, 0, 255)).save(buf, format="JPEG")
    return b64(buf.getvalue())


def test_404_and_405_are_json_errors(live):
    assert live.client.get("/v1/nowhere").json()["error"]["type"] == "invalid_request_error"
    r = live.client.get("/v1/generate")
    assert r.status_code == 405 and r.json()["error"]["message"]
