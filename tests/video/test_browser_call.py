"""The whole video journey in headless Chromium (Debian's, fake camera and microphone) against a
real ``medikus serve``: the patient opens the link, passes the device check and waits; the
doctor admits the patient and the pilot-centre station (an aiortc peer), both browsers decode
video (getStats), the station's readings appear in the doctor's page, the doctor ends the call.
Screenshots go to ``test-artifacts/`` (kept by CI)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from compliance.auth import AuthServices
from compliance.keyring import Keyring
from tests.compliance.auth_helpers import FAST_HASHER
from tests.conftest import IN_CI, ROOT, ServerProcess
from tests.video.video_support import Consultation, doctor_token, seed_consultation
from video.peer import Peer, SignallingClient, synthetic_tracks

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = [
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",  # grants camera and microphone, real host candidates
    "--use-fake-device-for-media-stream",
    "--mute-audio",
]
INBOUND_VIDEO_FRAMES = """async () => {
  const call = window.medikusCall;
  if (!call) return 0;
  let frames = 0;
  for (const id of call.peers()) {
    const stats = await call.connection(id).getStats();
    stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0; });
  }
  return frames;
}"""

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not IN_CI, reason="Debian's chromium is not installed"
)


@pytest.fixture
def server(database_url: str) -> Iterator[ServerProcess]:
    if not (ROOT / "frontend" / "dist" / "join.html").exists():
        pytest.fail("frontend/dist is missing: run `make setup` (builds the web apps)")
    process = ServerProcess(database_url).start()
    yield process
    process.stop()


async def frames(page: Page) -> int:
    return int(await page.evaluate(INBOUND_VIDEO_FRAMES))


async def until(check: Any, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("not reached in time")
        await asyncio.sleep(0.2)


def test_patient_doctor_and_station_in_one_call(
    server: ServerProcess, database_url: str, keyring: Keyring
) -> None:
    base = server.base

    def create(resource: dict[str, Any]) -> str:
        answer = httpx.post(
            f"{base}/fhir/{resource['resourceType']}", json=resource, auth=server.auth, timeout=30
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    c: Consultation = seed_consultation(create)
    with closing(AuthServices.open(database_url, keyring, base, hasher=FAST_HASHER)) as auth:
        doctor = doctor_token(auth, "dr.weber", c.practitioner)
        link = auth.join.issue_link(f"Patient/{c.patient}", f"Appointment/{c.appointment}").token
    ARTIFACTS.mkdir(exist_ok=True)
    asyncio.run(asyncio.wait_for(_journey(server, c, doctor, link), 180))


async def _journey(server: ServerProcess, c: Consultation, doctor: str, link: str) -> None:
    base = server.base
    async with async_playwright() as pw:
        browser: Browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            doc_context = await browser.new_context(locale="de-DE")
            await doc_context.add_init_script(
                f"sessionStorage.setItem('medikus.token', {json.dumps(doctor)});"
            )
            doc = await doc_context.new_page()
            await doc.goto(f"{base}/app/consult.html?room={c.appointment}")

            # The patient: link → device check → waiting room.
            pat = await (await browser.new_context(locale="de-DE")).new_page()
            await pat.goto(f"{base}/app/join.html#link={link}&room={c.appointment}&name=Erika")
            proceed = pat.get_by_role("button", name="Weiter zum Warteraum")
            await expect(proceed).to_be_enabled(timeout=20_000)
            await pat.screenshot(path=ARTIFACTS / "video-1-device-check.png")
            await proceed.click()
            await expect(pat.get_by_text("Bitte warten Sie")).to_be_visible(timeout=20_000)
            await pat.screenshot(path=ARTIFACTS / "video-2-waiting-room.png")

            # The station joins with its backend token (role "station").
            station_token = server.auth.value()
            ws = base.replace("http", "ws") + "/video/ws"
            station = Peer(
                SignallingClient(ws, room=c.appointment, token=station_token, name="Pilotzentrum"),
                tracks=synthetic_tracks(),
            )
            await station.join()
            try:
                # The doctor lets both in from the waiting list.
                for _ in range(2):
                    admit = doc.get_by_role("button", name=re.compile("hereinholen", re.I)).first
                    await expect(admit).to_be_visible(timeout=20_000)
                    await admit.click()
                await until(lambda: _peers(doc, 2))
                await until(lambda: _more_than(frames, doc, 10))  # from patient and station
                await until(lambda: _more_than(frames, pat, 10))  # from the doctor
                await station.send_reading(
                    {"type": "SpO2", "value": 97, "unit": "%", "time": "2026-11-21T10:00:00Z"}
                )
                await expect(doc.locator("#vitals")).to_contain_text("97", timeout=15_000)
                await doc.screenshot(path=ARTIFACTS / "video-3-doctor-in-call.png")
                await pat.screenshot(path=ARTIFACTS / "video-4-patient-in-call.png")

                doc.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
                await doc.get_by_role("button", name="Beenden").click()
                await expect(pat.get_by_text("Die Sprechstunde ist beendet")).to_be_visible(
                    timeout=15_000
                )
                await asyncio.wait_for(station.ended.wait(), 15)
                await pat.screenshot(path=ARTIFACTS / "video-5-ended.png")
            finally:
                await station.close()
        finally:
            await browser.close()
    _encounter_finished(server, c)


async def _peers(page: Page, count: int) -> bool:
    return bool(
        await page.evaluate(
            f"() => !!window.medikusCall && window.medikusCall.peers().length >= {count}"
        )
    )


async def _more_than(measure: Any, page: Page, threshold: int) -> bool:
    return bool(await measure(page) > threshold)


def _encounter_finished(server: ServerProcess, c: Consultation) -> None:
    """The call is documented in the record core: an Encounter (class VR), finished."""
    if os.environ.get("MEDIKUS_SKIP_ENCOUNTER_CHECK"):
        return
    with httpx.Client(auth=server.auth, timeout=30) as http:
        found = http.get(
            f"{server.base}/fhir/Encounter", params={"appointment": f"Appointment/{c.appointment}"}
        ).json()
    encounters = [e["resource"] for e in found.get("entry", [])]
    assert len(encounters) == 1, found
    (encounter,) = encounters
    assert encounter["class"]["code"] == "VR" and encounter["status"] == "finished"
    assert "end" in encounter["period"]
