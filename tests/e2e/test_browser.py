"""The upload page in a real headless Chromium: pick a sample photo, see the predicted label.

Needs Debian's ``chromium`` and ``chromium-driver``
(``apt-get install -y chromium chromium-driver``), driven by Selenium with the system driver, so
nothing is downloaded. Skips only when they are
absent. The screenshot lands in ``test-results/serve-page.png``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.chromium import headless_chromium
from tests.e2e.serve_support import image_bytes, live_server, tiny_cnn
from visionops.serve.app import ServeSettings, create_app
from visionops.serve.holder import ModelHolder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "sample" / "clothing-mini"


def sample_photo(tmp_path: Path) -> tuple[Path, list[str]]:
    """A real photo from the bundled sample and its class names (a generated JPEG if absent)."""
    photos = sorted(SAMPLE.glob("*/*.jpg"))
    if photos:
        return photos[0], sorted(p.name for p in SAMPLE.iterdir() if p.is_dir())
    path = tmp_path / "photo.jpg"
    path.write_bytes(image_bytes("JPEG", size=(160, 213)))
    return path, ["dress", "hat", "shoes"]


@pytest.fixture()
def browser(tmp_path, monkeypatch):
    with headless_chromium(tmp_path, monkeypatch) as driver:
        yield driver


def test_upload_page_shows_the_predicted_label(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    photo, labels = sample_photo(tmp_path)
    model = tiny_cnn(tmp_path / "clothes.onnx", labels=labels)
    app = create_app(ModelHolder(str(model)), ServeSettings())
    with live_server(app) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda d: "classes" in d.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "file").send_keys(str(photo))
        label = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".card .label")))
        predicted = label.text
        bars = browser.find_elements(By.CSS_SELECTOR, ".card .bar")
        status = browser.find_element(By.ID, "status").text
        out = REPO_ROOT / "test-results"
        out.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(out / "serve-page.png"))

    assert predicted in labels, f"page shows {predicted!r}; status: {status!r}"
    assert len(bars) == min(10, len(labels))
    assert status.startswith("done in")
    assert (out / "serve-page.png").stat().st_size > 5000
