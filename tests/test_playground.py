"""The playground page at `/`, in a real headless browser (Debian's chromium driven by Playwright):
type a prompt, read the streamed answer and the guardrail hits from the page."""

from __future__ import annotations

import httpx
import pytest

from conf.serve import GuardrailsConfig, ServeConfig
from tasks.serve.engine import Engine, load_model
from tests.services import find_binary
from tests.test_serve import greedy_reference, running
from tests.tiny_models import single_thread, tiny_lm_folder


def chromium_path() -> str:
    """Debian's chromium (Playwright's own browser download needs the internet); skip without it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = find_binary(name)
        if found:
            return found
    pytest.skip("chromium not installed: run `make services` (as root it apt-installs Debian's chromium)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium_path()
    folder = tiny_lm_folder(tmp_path_factory.mktemp("playground") / "model")
    model, tok = load_model(folder)
    engine = Engine(model, tok, "tiny", threads=1)
    cfg = ServeConfig(model="unused", guardrails=GuardrailsConfig(blocked_terms=["forbidden topic"]))
    with single_thread(), running(cfg, engine) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent === 'model: tiny'")
        page.engine = engine  # type: ignore[attr-defined]
        yield page
        browser.close()


def ask(page, prompt: str) -> tuple[str, str, str]:
    """Type `prompt`, press Enter, wait for the answer; (answer, finish reason, guardrail line)."""
    before = page.locator(".assistant").count()
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    answer = page.locator(".assistant").nth(before)
    answer.and_(page.locator("[data-done='1']")).wait_for(timeout=60_000)
    hits = page.locator(".hits").nth(before).text_content() or ""
    return answer.text_content() or "", answer.get_attribute("data-finish") or "", hits


def test_playground_chat_shows_the_answer(page):
    page.select_option("#decoding", "greedy")
    page.fill("#max_tokens", "8")
    text, finish, hits = ask(page, "Explain the Python function quantiles.")
    expected = greedy_reference(
        page.engine, [{"role": "user", "content": "Explain the Python function quantiles."}], 8
    )
    assert text == expected and finish in ("stop", "length")
    assert hits == "guardrails: no hits"


def test_playground_shows_guardrail_hits(page):
    page.fill("#max_tokens", "4")
    _, _, hits = ask(page, "my mail is bob@example.com")
    assert "prompt EMAIL_ADDRESS×1" in hits
    text, finish, hits = ask(page, "tell me about the forbidden topic")
    assert text == GuardrailsConfig().refusal and finish == "content_filter"
    assert "refused (prompt: forbidden topic)" in hits
    # the page's running total is the server's count (/health), refreshed after each answer
    total = httpx.get(page.url.rstrip("/") + "/health").json()["guardrails"]["hits"]
    assert total >= 2
    page.wait_for_function(f"document.getElementById('totals').textContent.endsWith(': {total}')")
