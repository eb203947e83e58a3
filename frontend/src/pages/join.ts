// Patient: join link or code → device check → waiting room → call.
import "../styles.css";
import { isCode, normaliseCode, parseFragment, redeem, roomFromToken } from "../lib/access";
import { Call } from "../lib/call";
import { controls, Stage } from "../lib/call-view";
import { announce, clear, focusHeading, h } from "../lib/dom";
import { hasKey, t } from "../lib/i18n";
import { openLocalMedia, playTestTone, startLevelMeter, stopMedia } from "../lib/media";
import type { RoomState } from "../lib/room";
import { probe, signallingUrl } from "../lib/signalling";
import { main, showMessage, startPage } from "../lib/shell";

const SESSION_KEY = "medikus.join";

interface Access {
  token: string;
  room: string;
  name: string | null;
}

// A join link is redeemed only when the patient leaves the device check: the access token it
// gives lives 5 minutes (the server's limit for tokens nothing else can end), the check may
// take longer, and the signalling server checks the token once, at the start.
interface Pending {
  link: string;
  room: string | null;
  name: string | null;
}

startPage(() => t("app.title"));
void begin();

async function begin(): Promise<void> {
  const fragment = parseFragment(location.hash);
  if (location.hash) {
    // The secret leaves the address bar and history; a reload finds it in this tab's session.
    history.replaceState(null, "", location.pathname + location.search);
  }
  if (fragment.link) {
    const pending: Pending = { link: fragment.link, room: fragment.room, name: fragment.name };
    return deviceCheck(pending);
  }
  if (fragment.token) return withAccess(fragment.token, fragment.room ?? roomFromToken(fragment.token), fragment.name);
  const saved = loadSaved();
  if (saved) return deviceCheck(saved);
  codeForm(fragment.grant);
}

function withAccess(token: string, room: string | null, name: string | null): void {
  if (!room) {
    showMessage(t("join.noroom"));
    return;
  }
  const access = { token, room, name };
  try {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(access));
  } catch {
    // storage disabled: works until a reload
  }
  deviceCheck(access);
}

function loadSaved(): Access | null {
  try {
    const raw = sessionStorage.getItem(SESSION_KEY);
    const data: unknown = raw ? JSON.parse(raw) : null;
    if (typeof data !== "object" || data === null) return null;
    const { token, room, name } = data as Record<string, unknown>;
    return typeof token === "string" && typeof room === "string"
      ? { token, room, name: typeof name === "string" ? name : null }
      : null;
  } catch {
    return null;
  }
}

function showBusy(text: string): void {
  const container = main();
  clear(container);
  container.append(h("p", { class: "busy", role: "status" }, text));
}

function field(id: string, label: string, hint: string, input: HTMLInputElement): HTMLElement {
  input.id = id;
  input.setAttribute("aria-describedby", `${id}-hint ${id}-error`);
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    h("p", { class: "hint", id: `${id}-hint` }, hint),
    input,
    h("p", { class: "field-error", id: `${id}-error`, role: "alert" }),
  );
}

function codeForm(grant: string | null): void {
  const container = main();
  clear(container);
  const grantInput = h("input", { name: "grant", autocomplete: "off", required: true, value: grant ?? "" });
  const codeInput = h("input", {
    name: "code",
    inputmode: "numeric",
    autocomplete: "one-time-code",
    required: true,
    maxlength: 12,
  });
  const status = h("p", { class: "form-status", role: "status" });
  const form = h(
    "form",
    { novalidate: true },
    field("grant", t("join.grant"), t("join.grant.hint"), grantInput),
    field("code", t("join.code"), t("join.code.hint"), codeInput),
    status,
    h("button", { type: "submit", class: "primary" }, t("join.submit")),
  );
  const setError = (input: HTMLInputElement, text: string) => {
    const error = document.getElementById(`${input.id}-error`);
    if (error) error.textContent = text;
    input.setAttribute("aria-invalid", text ? "true" : "false");
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const grantValue = grantInput.value.trim();
    const code = normaliseCode(codeInput.value);
    setError(grantInput, grantValue ? "" : t("join.grant.missing"));
    setError(codeInput, isCode(code) ? "" : t("join.code.invalid"));
    if (!grantValue) return grantInput.focus();
    if (!isCode(code)) return codeInput.focus();
    status.textContent = t("join.redeeming");
    void redeem(fetch.bind(window), { grant: grantValue, code }).then((result) => {
      if (result.ok) return withAccess(result.token, result.room, null);
      status.textContent = t(result.reason === "refused" ? "join.refused" : "join.unavailable");
    });
  });
  container.append(
    h("section", { "aria-labelledby": "join-title" }, h("h1", { id: "join-title" }, t("join.heading")), h("p", {}, t("join.intro")), form),
  );
  focusHeading(container);
}

function checkRow(title: string, ...content: (Node | string)[]): { row: HTMLElement; badge: HTMLElement } {
  const badge = h("span", { class: "badge pending" }, t("check.pending"));
  const row = h("section", { class: "check" }, h("h2", {}, title, " ", badge), ...content);
  return { row, badge };
}

function setBadge(badge: HTMLElement, ok: boolean | null): void {
  badge.className = `badge ${ok === null ? "pending" : ok ? "ok" : "failed"}`;
  badge.textContent = t(ok === null ? "check.pending" : ok ? "check.ok" : "check.failed");
}

async function redeemPending(pending: Pending, name: string | null): Promise<Access | null> {
  showBusy(t("join.redeeming"));
  const result = await redeem(fetch.bind(window), { link: pending.link });
  if (!result.ok) {
    showMessage(t(result.reason === "refused" ? "join.refused" : "join.unavailable"));
    return null;
  }
  const room = result.room ?? pending.room;
  if (!room) {
    showMessage(t("join.noroom"));
    return null;
  }
  const access = { token: result.token, room, name };
  try {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(access));
  } catch {
    // storage disabled: works until a reload
  }
  return access;
}

function deviceCheck(access: Access | Pending): void {
  const container = main();
  clear(container);
  const preview = h("video", { autoplay: true, playsinline: true, class: "preview", "aria-label": t("check.camera.preview") });
  preview.muted = true;
  const mediaError = h("p", { class: "notice", role: "alert" });
  mediaError.hidden = true;
  const camera = checkRow(t("check.camera"), preview);
  const meter = h("meter", { id: "mic-level", min: 0, max: 1, low: 0.05, value: 0 });
  const microphone = checkRow(
    t("check.microphone"),
    h("label", { for: "mic-level" }, t("check.microphone.level")),
    meter,
    h("p", { class: "hint" }, t("check.microphone.hint")),
  );
  const tone = h("button", { type: "button", class: "secondary" }, t("check.speaker.play"));
  const speaker = checkRow(t("check.speaker"), tone, h("p", { class: "hint" }, t("check.speaker.hint")));
  const connectionText = h("p", {});
  const connection = checkRow(t("check.connection"), connectionText);
  const nameInput = h("input", { id: "display-name", name: "name", autocomplete: "name", value: access.name ?? "" });
  const proceed = h("button", { type: "button", class: "primary" }, t("check.continue"));

  container.append(
    h(
      "section",
      { "aria-labelledby": "check-title", class: "device-check" },
      h("h1", { id: "check-title" }, t("check.heading")),
      h("p", {}, t("check.intro")),
      mediaError,
      camera.row,
      microphone.row,
      speaker.row,
      connection.row,
      h("div", { class: "field" }, h("label", { for: "display-name" }, t("check.name")), nameInput),
      proceed,
    ),
  );
  focusHeading(container);

  let stream: MediaStream | null = null;
  let stopMeter = () => undefined as void;
  // Only the listener knows whether the tone was heard: no badge unless playing fails.
  speaker.badge.hidden = true;
  tone.addEventListener("click", () => {
    tone.disabled = true;
    void playTestTone()
      .catch(() => {
        speaker.badge.hidden = false;
        setBadge(speaker.badge, false);
      })
      .finally(() => {
        tone.disabled = false;
        tone.focus();
      });
  });

  void openLocalMedia().then((media) => {
    if (!media.ok) {
      mediaError.textContent = t(media.error);
      mediaError.hidden = false;
      setBadge(camera.badge, false);
      setBadge(microphone.badge, false);
      proceed.textContent = t("check.continue.without");
      return;
    }
    stream = media.stream;
    preview.srcObject = stream;
    setBadge(camera.badge, stream.getVideoTracks().length > 0);
    setBadge(microphone.badge, stream.getAudioTracks().length > 0);
    try {
      stopMeter = startLevelMeter(stream, (level) => {
        meter.value = level;
      });
    } catch {
      // no Web Audio: the meter stays still, the microphone still works
    }
  });

  void probe((url) => new WebSocket(url), signallingUrl(location)).then((ok) => {
    setBadge(connection.badge, ok);
    connectionText.textContent = t(ok ? "check.connection.ok" : "check.connection.failed");
  });

  proceed.addEventListener("click", () => {
    stopMeter();
    const name = nameInput.value.trim() || null;
    if ("link" in access) {
      proceed.disabled = true;
      void redeemPending(access, name).then((redeemed) => {
        if (redeemed) enterCall(redeemed, stream);
        else stopMedia(stream);
      });
      return;
    }
    enterCall({ ...access, name }, stream);
  });
}

function enterCall(access: Access, local: MediaStream | null): void {
  const container = main();
  clear(container);
  const stage = new Stage(local);
  const heading = h("h1", { id: "call-title" }, t("wait.heading"));
  const status = h("p", { class: "lead", role: "status" }, t("wait.connecting"));
  let call: Call | null = null;
  const bar = controls(local, { label: "call.leave", run: () => call?.leave() });
  container.append(h("section", { "aria-labelledby": "call-title", class: "call patient" }, heading, status, stage.element, bar));
  focusHeading(container);

  let phase: RoomState["phase"] = "connecting";
  call = new Call({
    room: access.room,
    token: access.token,
    name: access.name ?? undefined,
    local,
    changed: (state) => {
      stage.setPeers(state.peers);
      if (state.phase === phase) return;
      phase = state.phase;
      if (phase === "waiting") {
        status.textContent = t("wait.text");
      } else if (phase === "in-call") {
        heading.textContent = t("call.heading");
        status.textContent = "";
        announce(t("call.heading"));
      } else if (phase === "ended" || phase === "left" || phase === "failed") {
        stopMedia(local);
        finish(state);
      }
    },
    announce: (effect) => {
      const name = effect.participant.name || "?";
      if (effect.event === "joined") announce(t("call.joined", { name }));
      if (effect.event === "left") announce(t("call.peer.left", { name }));
    },
    media: {
      media: (peer, stream) => stage.setMedia(peer, stream),
      state: (peer, state) => stage.setPeerState(peer, state),
      channelMessage: () => undefined,
      channelOpen: () => undefined,
    },
  });
  call.start();
  window.medikusCall = call; // browser tests read getStats() through this handle
}

function finish(state: RoomState): void {
  if (state.phase === "ended") {
    sessionStorage.removeItem(SESSION_KEY);
    showMessage(t("call.ended"), { title: t("call.heading"), tone: "info" });
  } else if (state.phase === "left") {
    showMessage(t("call.left"), { title: t("call.heading"), tone: "info" });
  } else {
    const code = `err.${state.error ?? "connection"}`;
    const text = hasKey(code) ? t(code) : t("err.connection");
    showMessage(text, { action: { label: t("retry"), run: () => location.reload() } });
  }
}
