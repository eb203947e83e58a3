// Doctor: waiting room with "Hereinholen", the call, call quality, chat and the station's vitals.
import "../styles.css";
import { Call } from "../lib/call";
import { controls, roleLabel, Stage } from "../lib/call-view";
import { announce, clear, focusHeading, h } from "../lib/dom";
import { hasKey, locale, t } from "../lib/i18n";
import { openLocalMedia, stopMedia } from "../lib/media";
import type { Participant } from "../lib/protocol";
import { isFinal, type RoomState } from "../lib/room";
import { main, showMessage, startPage } from "../lib/shell";
import { formatQuality, type Quality } from "../lib/stats";
import { describeReading } from "../lib/vitals";

const TOKEN_KEY = "medikus.token";
const STATS_INTERVAL_MS = 2000;
const MAX_CHAT = 200;
const MAX_VITALS = 50;

startPage(() => t("consult.heading"));
void begin();

async function begin(): Promise<void> {
  const room = new URLSearchParams(location.search).get("room");
  let token: string | null = null;
  try {
    token = sessionStorage.getItem(TOKEN_KEY);
  } catch {
    token = null;
  }
  if (!room) return showMessage(t("consult.noroom"));
  if (!token) return showMessage(t("consult.login"));
  main().append(h("p", { class: "busy", role: "status" }, t("loading")));
  const media = await openLocalMedia();
  consult(room, token, media.ok ? media.stream : null, media.ok ? null : t(media.error));
}

function panel(id: string, title: string, ...content: Node[]): HTMLElement {
  return h("section", { class: "panel", "aria-labelledby": id }, h("h2", { id }, title), ...content);
}

function consult(room: string, token: string, local: MediaStream | null, mediaProblem: string | null): void {
  const container = main();
  clear(container);
  const stage = new Stage(local);
  let call: Call | null = null;
  const bar = controls(local, {
    label: "call.end",
    run: () => {
      if (window.confirm(t("call.end.confirm"))) call?.end();
    },
  });
  const notice = h("p", { class: "notice", role: "alert" }, mediaProblem ?? "");
  notice.hidden = mediaProblem === null;

  const waitingList = h("ul", { class: "people", id: "waiting-list" });
  const waitingEmpty = h("p", { class: "hint" }, t("consult.waiting.empty"));
  const inCallList = h("ul", { class: "people", id: "participants" });
  const qualityBody = h("div", { class: "quality" }, h("p", { class: "hint" }, t("consult.quality.empty")));
  const vitalsList = h("ul", { class: "vitals", id: "vitals", "aria-live": "polite", "aria-relevant": "additions" });
  const vitalsEmpty = h("p", { class: "hint" }, t("consult.vitals.empty"));
  const chatLog = h("ol", { class: "chat-log", id: "chat-log", "aria-live": "polite", "aria-relevant": "additions" });
  const chatInput = h("input", { id: "chat-input", name: "message", autocomplete: "off", maxlength: 2000 });
  const chatForm = h(
    "form",
    { class: "chat-form" },
    h("label", { for: "chat-input" }, t("consult.chat.message")),
    h("div", { class: "row" }, chatInput, h("button", { type: "submit", class: "secondary" }, t("consult.chat.send"))),
  );

  container.append(
    h(
      "div",
      { class: "consult" },
      h(
        "section",
        { class: "call doctor", "aria-labelledby": "call-title" },
        h("h1", { id: "call-title" }, t("consult.heading")),
        notice,
        stage.element,
        bar,
      ),
      h(
        "aside",
        { class: "side" },
        panel("waiting-title", t("consult.waiting"), waitingEmpty, waitingList),
        panel("participants-title", t("consult.participants"), inCallList),
        panel("vitals-title", t("consult.vitals"), vitalsEmpty, vitalsList),
        panel("quality-title", t("consult.quality"), qualityBody),
        panel("chat-title", t("consult.chat"), chatLog, chatForm),
      ),
    ),
  );
  focusHeading(container);

  const names = new Map<string, string>();
  const nameOf = (id: string) => names.get(id) ?? "?";

  const renderWaiting = (waiting: Participant[]) => {
    // Rebuild only when the set changes, so focus on a button is not lost on every update.
    const key = waiting.map((p) => `${p.id}:${p.name}`).join("|");
    if (waitingList.dataset.key === key) return;
    waitingList.dataset.key = key;
    clear(waitingList);
    waitingEmpty.hidden = waiting.length > 0;
    for (const p of waiting) {
      const name = p.name || "?";
      waitingList.append(
        h(
          "li",
          { "data-participant": p.id },
          h("span", { class: "person" }, name, " ", h("span", { class: "role" }, `(${roleLabel(p.role)})`)),
          h(
            "button",
            {
              type: "button",
              class: "primary admit",
              "aria-label": t("consult.admit.label", { name }),
              onclick: (event: Event) => {
                (event.currentTarget as HTMLButtonElement).disabled = true;
                call?.admit(p.id);
              },
            },
            t("consult.admit"),
          ),
        ),
      );
    }
  };

  const renderInCall = (state: RoomState) => {
    clear(inCallList);
    const everyone = state.me ? [state.me, ...state.peers] : state.peers;
    for (const p of everyone) {
      const you = p.id === state.me?.id ? ` – ${t("call.you")}` : "";
      inCallList.append(h("li", {}, `${p.name || "?"} (${roleLabel(p.role)})${you}`));
    }
  };

  const addChat = (who: string, text: string) => {
    chatLog.append(h("li", {}, h("strong", {}, `${who}: `), text));
    while (chatLog.children.length > MAX_CHAT) chatLog.firstElementChild?.remove();
    chatLog.scrollTop = chatLog.scrollHeight;
  };

  const addVitals = (peer: string, data: string) => {
    vitalsEmpty.hidden = true;
    for (const line of describeReading(data, locale())) {
      const time = line.time ? new Date(line.time) : null;
      const when = time && !Number.isNaN(time.getTime()) ? time.toLocaleTimeString(locale()) : "";
      vitalsList.prepend(
        h(
          "li",
          { "data-peer": peer },
          h("span", { class: "vital-label" }, line.label),
          h("span", { class: "vital-value" }, line.value),
          when ? h("time", { datetime: line.time ?? "" }, when) : null,
        ),
      );
    }
    while (vitalsList.children.length > MAX_VITALS) vitalsList.lastElementChild?.remove();
  };

  chatForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = chatInput.value.trim();
    if (!text || !call) return;
    call.chat(text);
    addChat(t("call.you"), text);
    chatInput.value = "";
    chatInput.focus();
  });

  let phase: RoomState["phase"] = "connecting";
  let shownError: string | null = null;
  call = new Call({
    room,
    token,
    local,
    changed: (state) => {
      for (const p of [...state.peers, ...state.waiting]) names.set(p.id, p.name || "?");
      stage.setPeers(state.peers);
      renderWaiting(state.waiting);
      renderInCall(state);
      if (state.error !== shownError && !isFinal(state.phase)) {
        shownError = state.error;
        const key = `err.${state.error ?? ""}`;
        notice.textContent = hasKey(key) ? t(key) : (state.errorMessage ?? "");
        notice.hidden = notice.textContent === "";
      }
      if (state.phase === phase) return;
      phase = state.phase;
      if (phase === "ended" || phase === "left" || phase === "failed") {
        window.clearInterval(statsTimer);
        stopMedia(local);
        finish(state);
      }
    },
    announce: (effect) => {
      const name = effect.participant.name || "?";
      const key = effect.event === "waiting" ? "consult.waiting.new" : effect.event === "joined" ? "call.joined" : "call.peer.left";
      announce(t(key, { name }));
    },
    media: {
      media: (peer, stream) => stage.setMedia(peer, stream),
      state: (peer, state) => stage.setPeerState(peer, state),
      channelMessage: (peer, label, data) => {
        if (label === "vitals") addVitals(peer, data);
        if (label === "chat") addChat(nameOf(peer), data.slice(0, 2000));
      },
      channelOpen: () => undefined,
    },
  });
  call.start();
  window.medikusCall = call;

  const statsTimer = window.setInterval(() => {
    const current = call;
    if (!current) return;
    void Promise.all(current.peers().map(async (peer) => [peer, await current.quality(peer)] as const)).then(
      (rows) => renderQuality(qualityBody, rows, nameOf),
    );
  }, STATS_INTERVAL_MS);
}

function renderQuality(
  body: HTMLElement,
  rows: (readonly [string, Quality | null])[],
  nameOf: (id: string) => string,
): void {
  const present = rows.filter((r): r is readonly [string, Quality] => r[1] !== null);
  clear(body);
  if (present.length === 0) {
    body.append(h("p", { class: "hint" }, t("consult.quality.empty")));
    return;
  }
  const head = h(
    "tr",
    {},
    h("th", { scope: "col" }, ""),
    ...(["q.rtt", "q.loss", "q.fps", "q.bitrate.in", "q.bitrate.out", "q.resolution"] as const).map((k) =>
      h("th", { scope: "col" }, t(k)),
    ),
  );
  const table = h("table", {}, h("thead", {}, head), h("tbody", {}));
  const tbody = table.tBodies[0];
  for (const [peer, q] of present) {
    const f = formatQuality(q, locale(), t("q.unknown"));
    const gradeKey = q.grade === "unknown" ? "q.unknown" : (`q.${q.grade}` as const);
    tbody?.append(
      h(
        "tr",
        { "data-peer": peer, "data-fps": q.fps ?? "", class: `grade-${q.grade}` },
        h("th", { scope: "row" }, nameOf(peer), " ", h("span", { class: "grade" }, `(${t(gradeKey)})`)),
        ...[f.rtt, f.loss, f.fps, f.inBitrate, f.outBitrate, f.resolution].map((v) => h("td", {}, v)),
      ),
    );
  }
  body.append(h("div", { class: "table-scroll", tabindex: 0, role: "region", "aria-labelledby": "quality-title" }, table));
}

function finish(state: RoomState): void {
  if (state.phase === "ended") {
    showMessage(t("call.ended"), { title: t("consult.heading"), tone: "info" });
    return;
  }
  const code = `err.${state.error ?? "connection"}`;
  showMessage(hasKey(code) ? t(code) : t("err.connection"), {
    action: { label: t("retry"), run: () => location.reload() },
  });
}
