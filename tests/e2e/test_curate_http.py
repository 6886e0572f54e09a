"""The review and label servers over HTTP (no browser): hardening, decisions, undo, finish.

Fast: a handful of generated images, no model. The browser tests are in test_curate_pages.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.data.imagegen import write_image
from visionops.curate.label_app import create_label_app
from visionops.curate.labeling import LabelSession, sha256_of
from visionops.curate.queue import Card
from visionops.curate.review_app import ReviewSession, create_review_app

pytestmark = pytest.mark.e2e

LOCAL = "http://127.0.0.1:8011"


@pytest.fixture()
def review(tmp_path: Path) -> tuple[TestClient, ReviewSession]:
    files = {}
    cards = []
    for i, label in enumerate(["cat", "dog", "dog"]):
        path = write_image(tmp_path / "data" / label / f"img_{i}.png", size=(40, 40))
        sha = sha256_of(path)
        files[sha] = path
        image = {"sha256": sha, "path": f"{label}/img_{i}.png", "label": label, "split": "train"}
        cards.append(Card(f"issue-{i + 1}", "label issue", i + 1, [image], "cat", 0.9, 0.1))
    session = ReviewSession(cards, ["cat", "dog"], files, tmp_path / "curation.csv", tmp_path)
    return TestClient(create_review_app(session), base_url=LOCAL), session


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.exists() else []


def test_pages_carry_the_security_headers(review) -> None:
    client, _ = review
    for url in ("/", "/static/review.js", "/static/curate.css", "/api/queue"):
        r = client.get(url)
        assert r.status_code == 200, url
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "http" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    page = client.get("/").text
    assert "<script>" not in page and "https://" not in page  # no inline script, no CDN
    assert client.get("/static/../review_app.py").status_code == 404
    assert client.get("/docs").status_code == 404


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"host": "evil.example:8011"}, 403),  # DNS rebinding
        ({"content-type": "text/plain"}, 403),  # a cross-site form / no-cors fetch
        ({"content-type": "application/json", "origin": "http://evil.example"}, 403),
        ({"content-type": "application/json", "origin": LOCAL}, 200),
        ({"content-type": "application/json"}, 200),
    ],
)
def test_writes_need_json_from_this_origin(review, headers: dict, status: int) -> None:
    client, session = review
    body = '{"card": "issue-1", "action": "exclude"}'
    r = client.post("/api/decide", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert len(_rows(session.curation_file)) == (1 if status == 200 else 0)


def test_decide_relabel_exclude_undo(review) -> None:
    client, session = review
    q = client.post("/api/decide", json={"card": "issue-2", "action": "relabel", "label": "cat"})
    assert q.status_code == 200 and q.json()["decided"] == 1
    client.post("/api/decide", json={"card": "issue-3", "action": "exclude"})
    client.post("/api/decide", json={"card": "issue-2", "action": "keep"})  # changes its mind
    assert {r["action"] for r in _rows(session.curation_file)} == {"keep", "exclude"}
    state = client.post("/api/undo", json={}).json()  # back to relabel
    assert state["cards"][1]["decision"] == {"action": "relabel", "label": "cat"}
    client.post("/api/undo", json={})
    client.post("/api/undo", json={})
    assert _rows(session.curation_file) == []
    assert client.post("/api/undo", json={}).status_code == 409
    bad = client.post("/api/decide", json={"card": "issue-1", "action": "relabel", "label": "cow"})
    assert bad.status_code == 422 and "not a class" in bad.json()["detail"]
    assert client.post("/api/decide", json={"card": "nope", "action": "keep"}).status_code == 404


def test_images_only_by_known_hash(review) -> None:
    client, session = review
    sha = next(iter(session.files))
    r = client.get(f"/api/image/{sha}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert client.get("/api/image/" + "0" * 64).status_code == 404


def test_label_session_never_overwrites_and_resumes(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    a = write_image(inbox / "a.png", size=(40, 40))
    write_image(inbox / "b.png", size=(40, 40))
    (inbox / "notes.txt").write_text("not an image")
    data = tmp_path / "data"
    taken = write_image(data / "cat" / "a.png", size=(40, 40), seed=99)  # same name, other bytes
    original = taken.read_bytes()
    state = tmp_path / "labels.csv"
    session = LabelSession(inbox, ["cat", "dog"], state, data, tmp_path)
    assert session.state()["total"] == 2  # notes.txt is not an image
    client = TestClient(create_label_app(session), base_url=LOCAL)
    first = client.get("/api/state").json()["current"]["sha256"]
    assert client.post("/api/label", json={"sha256": first, "label": "cat"}).status_code == 200
    second = client.get("/api/state").json()["current"]["sha256"]
    client.post("/api/label", json={"sha256": second, "label": "skip"})
    assert LabelSession(inbox, ["cat", "dog"], state, data, tmp_path).state()["done"] == 2
    out = client.post("/api/finish", json={}).json()
    assert out["dvc"].endswith("run `dvc add " + str(data) + "` yourself")
    assert taken.read_bytes() == original  # never overwritten
    copied = out["copied"]
    assert len(copied) == 1 and copied[0].startswith("cat/")
    if sha256_of(a) == first:
        assert copied[0] == f"cat/a-{first[:8]}.png"
    assert client.post("/api/finish", json={}).json()["copied"] == []
    assert client.post("/api/label", json={"sha256": first, "label": "cow"}).status_code == 422


def test_queue_without_a_model_holds_validate_findings() -> None:
    import pandas as pd

    from visionops.curate.queue import build_queue

    def row(path, label, sha, group="", suspect="", usable="True"):
        return dict(
            path=path, label=label, sha256=sha, usable=usable, dup_group=group, suspect=suspect
        )

    manifest = pd.DataFrame(
        [
            row("cat/a.jpg", "cat", "a" * 64, group="a" * 64),
            row("dog/a.png", "dog", "b" * 64, group="a" * 64),
            row("cat/blank.png", "cat", "c" * 64, suspect="near-blank: gray std 0.0"),
            row("dog/x.jpg", "dog", "d" * 64),
            row("dog/gone.jpg", "dog", "e" * 64, group="e" * 64, usable="False"),
        ]
    )
    cards = build_queue(manifest, None)
    assert [(c.kind, c.id) for c in cards] == [
        ("outlier", "outlier-1"),
        ("near-duplicate", "dup-1"),
    ]
    assert cards[0].note == "validate: near-blank: gray std 0.0"
    assert cards[1].note.endswith("labels differ: cat vs dog")
    assert [i["path"] for i in cards[1].images] == ["cat/a.jpg", "dog/a.png"]
