"""``visionops review``: walk the queue one card at a time, decide, and save to ``curation.csv``.

    visionops review                 # http://127.0.0.1:8011/  (loopback only)

Each decision (keep, relabel to a class, exclude) is written to ``curation.csv`` at once, by
content hash, atomically; ``data/`` is never touched. Undo reverts the last decision of this
session (the file keeps no history: git does). The next ``dvc repro`` re-runs validate, because
``curation.csv`` is one of its dependencies, and trains on the curated set.

API (JSON): ``GET /api/queue``; ``POST /api/decide`` ``{"card": id, "action": "keep" |
"relabel" | "exclude", "label": class}``; ``POST /api/undo``; ``GET /api/image/<sha256>``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from visionops.config import Config
from visionops.curate.queue import Card, build_queue, read_manifest
from visionops.curate.web import create_page_app, error, serve_app, thumbnail
from visionops.data.curation import (
    ACTIONS,
    Decision,
    curation_path,
    now_utc,
    read_curation,
    write_curation,
)
from visionops.errors import VisionOpsError
from visionops.paths import display_path, stage_paths

log = logging.getLogger(__name__)

DEFAULT_PORT = 8011


@dataclass
class ReviewSession:
    """The queue, the decisions file and this session's undo stack (thread-safe)."""

    cards: list[Card]
    classes: list[str]
    files: dict[str, Path]  # sha256 -> image file
    curation_file: Path
    project_root: Path
    history: list[list[tuple[str, Decision | None]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.by_id = {c.id: c for c in self.cards}

    def _decision_of(self, card: Card, decisions: dict[str, Decision]) -> dict | None:
        found = [decisions.get(img["sha256"]) for img in card.images]
        if any(d is None for d in found):
            return None
        kinds = {(d.action, d.label) for d in found}
        if len(kinds) > 1:
            return {"action": "mixed", "label": ""}
        action, label = kinds.pop()
        return {"action": action, "label": label}

    def state(self) -> dict:
        decisions = read_curation(self.curation_file)
        cards = [{**c.to_dict(), "decision": self._decision_of(c, decisions)} for c in self.cards]
        return {
            "classes": self.classes,
            "cards": cards,
            "decided": sum(c["decision"] is not None for c in cards),
            "can_undo": bool(self.history),
            "curation_file": display_path(self.curation_file, self.project_root),
        }

    def decide(self, card_id: str, action: str, label: str = "") -> dict:
        card = self.by_id.get(card_id)
        if card is None:
            raise KeyError(card_id)
        if action not in ACTIONS:
            raise ValueError(f"action {action!r}: use one of {', '.join(ACTIONS)}")
        if action == "relabel" and label not in self.classes:
            raise ValueError(f"relabel to {label!r}: not a class ({', '.join(self.classes)})")
        with self.lock:
            decisions = read_curation(self.curation_file)
            before = [(img["sha256"], decisions.get(img["sha256"])) for img in card.images]
            when = now_utc()
            for img in card.images:
                decisions[img["sha256"]] = Decision(
                    img["sha256"], action, label if action == "relabel" else "", img["path"], when
                )
            write_curation(self.curation_file, decisions)
            self.history.append(before)
        log.info("review: %s %s%s", card_id, action, f" -> {label}" if label else "")
        return self.state()

    def undo(self) -> dict:
        with self.lock:
            if not self.history:
                raise LookupError("nothing to undo in this session")
            decisions = read_curation(self.curation_file)
            for sha, previous in self.history.pop():
                if previous is None:
                    decisions.pop(sha, None)
                else:
                    decisions[sha] = previous
            write_curation(self.curation_file, decisions)
        return self.state()


def create_review_app(session: ReviewSession, host: str = "127.0.0.1") -> FastAPI:
    app = create_page_app("VisionOps review", "review.html", ("common.js", "review.js"), host=host)
    app.state.session = session

    @app.get("/api/queue")
    async def queue() -> dict:
        return session.state()

    @app.post("/api/decide")
    async def decide(request: Request) -> JSONResponse:
        body = await _json(request)
        if not isinstance(body, dict):
            return error(400, "send a JSON object {card, action, label}")
        try:
            state = session.decide(
                str(body.get("card", "")), str(body.get("action", "")), str(body.get("label", ""))
            )
        except KeyError:
            return error(404, f"no card {body.get('card')!r}")
        except ValueError as exc:
            return error(422, str(exc))
        return JSONResponse(state)

    @app.post("/api/undo")
    async def undo() -> JSONResponse:
        try:
            return JSONResponse(session.undo())
        except LookupError as exc:
            return error(409, str(exc))

    @app.get("/api/image/{sha256}")
    async def image(sha256: str) -> Response:
        path = session.files.get(sha256)
        if path is None:
            return error(404, "unknown image")
        return thumbnail(path)

    return app


async def _json(request: Request):
    try:
        return await request.json()
    except ValueError:
        return None


def build_session(config: Config, issues: bool = True) -> ReviewSession:
    """Read the manifest and (when a trained model exists) rank the issues; build the queue."""
    manifest = read_manifest(stage_paths(config).manifest)
    found = None
    if issues:
        from visionops.curate.issues import find_issues

        try:
            found = find_issues(config)
        except VisionOpsError as exc:
            log.warning("review: label issues and outliers unavailable: %s", exc)
    cards = build_queue(manifest, found)
    with_hash = manifest[manifest["sha256"] != ""]
    files = {r.sha256: config.data_dir / r.path for r in with_hash.itertuples()}
    classes = sorted(set(manifest.loc[manifest["label"] != "", "label"]))
    if "folder_label" in manifest:
        classes = sorted(set(classes) | set(manifest["folder_label"]) - {""})
    return ReviewSession(cards, classes, files, curation_path(config), config.root)


def run(config: Config, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    session = build_session(config)
    kinds = {}
    for card in session.cards:
        kinds[card.kind] = kinds.get(card.kind, 0) + 1
    log.info(
        "review queue: %s; decisions go to %s",
        ", ".join(f"{n} {k}" for k, n in kinds.items()) or "empty",
        session.curation_file,
    )
    serve_app(create_review_app(session, host), host, port, "visionops review")
