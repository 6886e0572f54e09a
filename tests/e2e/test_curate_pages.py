"""Curation end to end: a real `dvc repro` trains on a small learnable set with one mislabeled
image, one junk image and one near-copy; the issue ranking finds them; both pages are driven
by keyboard in headless Chromium; the next `dvc repro split` reflects the decisions.

The set is learnable and the test honest: red, green and blue images (a base colour plus
uniform noise of +-40 per channel, 48 px JPEGs from ``tests/project_factory``), 20 per class;
a model separates them from colour alone. One *red* image is saved in ``data/blue/`` (the label
error) and a text screenshot in ``data/green/`` (the junk). The ranking never sees which: it
gets the trained model's embeddings of every split image and their given labels; each image's
probabilities come from a K-fold head that did not fit that image (``curate/issues.py``).

Screenshots for ``docs/CURATE.md`` land in ``docs/images/`` (palette PNGs, <= ~100 KB).
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest

from tests.data.imagegen import tree_digest
from tests.data.test_near_duplicates import _screenshot
from tests.e2e.chromium import headless_chromium
from tests.e2e.serve_support import live_server, tiny_cnn
from tests.project_factory import REPO_ROOT, make_project, run, write_class_images

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MISLABELED = "blue/blue_0900.jpg"  # a red image in the blue folder
JUNK = "green/green_0901.jpg"  # a screenshot of text
COPY = "green/green_0003-copy.png"  # a PNG copy of green/green_0003.jpg
DOCS_IMAGES = REPO_ROOT / "docs" / "images"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    root = make_project(
        tmp_path_factory.mktemp("curate") / "proj",
        per_class=20,
        overrides={"train.head_epochs": 3, "train.finetune_epochs": 1},
    )
    red = write_class_images(root / "scratch", "red", 1, start=900)[0]
    shutil.move(red, root / "data" / MISLABELED)
    shutil.rmtree(root / "scratch")
    _screenshot(root / "data" / JUNK)
    Image.open(root / "data" / "green" / "green_0003.jpg").save(root / "data" / COPY)
    run(["dvc", "add", "-q", "data"], root)
    started = time.perf_counter()
    run(["dvc", "repro", "train"], root, timeout=900)
    print(f"\ndvc repro train (validate, split, train): {time.perf_counter() - started:.0f} s")
    return root


def _config(root: Path):
    from visionops.config import load_config

    return load_config(root / "params.yaml")


def _counts(root: Path) -> dict:
    return json.loads((root / "artifacts" / "split" / "counts.json").read_text())


def _class_totals(counts: dict) -> dict[str, int]:
    totals: dict[str, int] = {}
    for split in ("train", "val", "test"):
        for label, n in counts[split].items():
            totals[label] = totals.get(label, 0) + n
    return totals


def test_mislabeled_and_junk_images_rank_in_the_top_5(project: Path) -> None:
    from mlflow import MlflowClient

    from visionops.curate.issues import find_issues
    from visionops.evaluate.stage import read_train_run

    result = find_issues(_config(project))
    issues = result.label_issues.set_index("path")
    outliers = result.outliers.set_index("path")
    print(
        f"\nlabel issues: {MISLABELED} rank {issues.at[MISLABELED, 'rank']} of "
        f"{len(issues)} candidates ({result.summary['label_issues_flagged']} flagged); "
        f"outliers: {JUNK} rank {outliers.at[JUNK, 'rank']} of {len(outliers)}; "
        f"out-of-sample accuracy {result.summary['out_of_sample_accuracy']}, "
        f"{result.summary['folds']} folds, {result.summary['seconds']} s"
    )
    assert issues.at[MISLABELED, "rank"] <= 5
    assert issues.at[MISLABELED, "predicted"] == "red"
    assert outliers.at[JUNK, "rank"] <= 5
    for name in ("label_issues.csv", "outliers.csv", "label_issues.png", "outliers.png"):
        assert (result.folder / name).stat().st_size > 100, name
    run_info = read_train_run(_config(project))
    client = MlflowClient(tracking_uri=run_info["tracking_uri"])
    logged = {a.path for a in client.list_artifacts(run_info["run_id"], "curate")}
    assert "curate/label_issues.csv" in logged and "curate/outliers.png" in logged
    metrics = client.get_run(run_info["run_id"]).data.metrics
    assert metrics["curate_label_issues"] >= 1


def _small_png(src: Path, dest: Path) -> Path:
    """Screenshots for the docs, at most ~100 KB: a 128-colour palette (noise-free UI text
    survives it), fewer colours only if still too big."""
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as img:
        rgb = img.convert("RGB")
    for colours in (128, 64, 32):
        rgb.quantize(colours, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)
        if dest.stat().st_size <= 100_000:
            break
    return dest


@pytest.fixture()
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with headless_chromium(tmp_path, monkeypatch, console_log=True) as driver:
        yield driver


def _press(browser, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).send_keys(key).perform()


def _no_console_errors(browser) -> None:
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_review_page_by_keyboard_then_repro_applies_it(project: Path, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from visionops.curate.review_app import build_session, create_review_app

    config = _config(project)
    before = _class_totals(_counts(project))
    data_before = tree_digest(project / "data")
    session = build_session(config)
    classes = session.classes
    assert classes == ["blue", "green", "red"]

    def card_of(kind: str, path: str) -> str:
        return next(c.id for c in session.cards if c.kind == kind and c.images[0]["path"] == path)

    wanted = {card_of("label issue", MISLABELED): "3", card_of("outlier", JUNK): "x"}
    dup = next(c for c in session.cards if c.kind == "near-duplicate")
    assert {i["path"] for i in dup.images} == {"green/green_0003.jpg", COPY}

    wait = WebDriverWait(browser, 20)
    browser.set_window_size(1000, 1040)  # the whole card, buttons included, in the screenshot
    with live_server(create_review_app(session)) as url:
        browser.get(url + "/")
        wait.until(lambda d: d.find_element(By.ID, "card").is_displayed())

        def current() -> str:
            return browser.find_element(By.ID, "card").get_attribute("data-id")

        def decided() -> int:
            return int(browser.find_element(By.ID, "progress").text.split()[0])

        def status() -> str:
            return browser.find_element(By.ID, "status").text

        def go_to(card_id: str) -> None:
            for _ in range(len(session.cards)):
                if current() == card_id:
                    return
                _press(browser, Keys.ARROW_RIGHT)
            assert current() == card_id

        for card_id, key in wanted.items():  # walk with → to the card, then decide by key
            go_to(card_id)
            if card_id.startswith("issue"):
                assert browser.find_element(By.ID, "given").text == "blue"
                assert browser.find_element(By.ID, "predicted").text.startswith("red")
            _press(browser, key)
            wait.until(lambda d, c=card_id: status().startswith(f"saved: {c} "))
        settled = decided()  # an image on two cards (issue + outlier) decides both
        while current() in wanted:  # keep one more card, then undo that keep
            _press(browser, Keys.ARROW_RIGHT)
        kept = current()
        _press(browser, "k")
        wait.until(lambda d: status() == f"saved: {kept} keep")
        assert decided() > settled
        _press(browser, "u")
        wait.until(lambda d: status() == "undone" and decided() == settled)

        browser.refresh()  # the state survives a reload: it is in curation.csv
        wait.until(lambda d: d.find_element(By.ID, "card").is_displayed())
        wait.until(lambda d: decided() == settled)
        expected = {"issue": "decided: relabel to red", "outlier": "decided: exclude"}
        for card_id in wanted:
            go_to(card_id)
            kind = card_id.split("-")[0]
            assert browser.find_element(By.ID, "decision").text == expected[kind]
            if kind == "issue":
                shot = tmp_path / "review.png"
                assert browser.save_screenshot(str(shot))
                _small_png(shot, DOCS_IMAGES / "review-page.png")
        _no_console_errors(browser)

    rows = list(csv.DictReader((project / "curation.csv").open()))
    assert sorted((r["path"], r["action"], r["label"]) for r in rows) == [
        (MISLABELED, "relabel", "red"),
        (JUNK, "exclude", ""),
    ]
    assert tree_digest(project / "data") == data_before  # data/ is never edited

    proc = run(["dvc", "repro", "split"], project)
    assert "validate" in proc.stdout  # curation.csv is a dependency of validate
    after = _class_totals(_counts(project))
    assert after == {
        "blue": before["blue"] - 1,
        "green": before["green"] - 1,
        "red": before["red"] + 1,
    }, (before, after)


def test_label_page_by_keyboard_resumes_and_finishes_into_data(
    project: Path, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from visionops.curate.label_app import create_label_app
    from visionops.curate.labeling import LabelSession, sha256_of
    from visionops.inference import Predictor

    inbox = tmp_path / "inbox"
    colour = {}
    for label in ("red", "green"):
        for path in write_class_images(inbox, label, 4, start=500):
            colour[sha256_of(path)] = label
    data = project / "data"
    old_files = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    dvc_before = (project / "data.dvc").read_text()
    before = _class_totals(_counts(project))
    state = tmp_path / "labels.csv"
    model = Predictor(tiny_cnn(tmp_path / "m.onnx", labels=["green", "red"]))
    session = LabelSession(inbox, ["red", "green"], state, data, project, model)
    margins = [i.margin for i in session.items]
    assert margins == sorted(margins)  # most uncertain first

    wait = WebDriverWait(browser, 20)
    with live_server(create_label_app(session)) as url:
        browser.get(url + "/")
        wait.until(lambda d: d.find_element(By.ID, "card").is_displayed())

        def sha() -> str:
            return browser.find_element(By.ID, "card").get_attribute("data-sha")

        def done() -> int:
            return int(browser.find_element(By.ID, "progress").text.split()[0])

        def label_current() -> None:
            n = done()
            _press(browser, Keys.ARROW_LEFT if colour[sha()] == "red" else Keys.ARROW_RIGHT)
            wait.until(lambda d: done() == n + 1)

        for _ in range(5):
            label_current()
        _press(browser, "u")  # undo the fifth, then label it again
        wait.until(lambda d: done() == 4)
        label_current()
        browser.refresh()
        wait.until(lambda d: d.find_element(By.ID, "card").is_displayed() and done() == 5)
        assert "5 of 8 labeled" in browser.find_element(By.ID, "progress").text
        shot = tmp_path / "label.png"
        assert browser.save_screenshot(str(shot))
        _small_png(shot, DOCS_IMAGES / "label-page.png")

        browser.find_element(By.ID, "finish").click()
        wait.until(lambda d: "copied" in d.find_element(By.ID, "status").text)
        status = browser.find_element(By.ID, "status").text
        _no_console_errors(browser)

    assert status.startswith("copied 5 new image(s) into data/"), status
    decisions = list(csv.DictReader(state.open()))
    assert len(decisions) == 5 and all(colour[r["sha256"]] == r["label"] for r in decisions)
    # a restart resumes: a new session over the same state file
    again = LabelSession(inbox, ["red", "green"], state, data, project)
    assert again.state()["done"] == 5
    # new files only: everything that was there is byte-identical, 5 images were added
    assert all(p.read_bytes() == b for p, b in old_files.items())
    added = {p for p in data.rglob("*") if p.is_file()} - set(old_files)
    assert len(added) == 5 and all(colour[sha256_of(p)] == p.parent.name for p in added)
    assert (project / "data.dvc").read_text() != dvc_before  # dvc add data ran
    assert again.finish().copied == []  # a second finish copies nothing

    run(["dvc", "repro", "split"], project)
    after = _class_totals(_counts(project))
    added_per = {c: sum(p.parent.name == c for p in added) for c in ("red", "green")}
    assert after["red"] == before["red"] + added_per["red"]
    assert after["green"] == before["green"] + added_per["green"]
