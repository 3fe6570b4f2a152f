"""The playground page in headless Chromium: a caption in mode image streams in an <img> that decodes."""

from .conftest import PROMPT


def test_the_playground_draws_an_image_in_headless_chromium(live, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    chromium.get(live.url + "/")
    chromium.find_element(By.ID, "prompt").send_keys(PROMPT)
    Select(chromium.find_element(By.ID, "mode")).select_by_value("image")
    chromium.find_element(By.ID, "seed").send_keys("0")
    chromium.find_element(By.ID, "generate").click()
    decoded = ("const i = document.querySelector('#output img'); "
               "return i !== null && i.complete && i.naturalWidth > 0")
    WebDriverWait(chromium, 120).until(lambda d: d.execute_script(decoded))
    WebDriverWait(chromium, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith("done"))
    width, height, src = chromium.execute_script(
        "const i = document.querySelector('#output img'); return [i.naturalWidth, i.naturalHeight, i.src]")
    errors = chromium.find_elements(By.CSS_SELECTOR, "#output .error")
    assert (width, height) == (32, 32) and src.startswith("data:image/png;base64,") and not errors
