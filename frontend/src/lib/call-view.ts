// The video stage shared by the patient and doctor pages: tiles, own preview, call controls.
import { h } from "./dom";
import { t, type MessageKey } from "./i18n";
import type { Participant } from "./protocol";

interface Tile {
  figure: HTMLElement;
  video: HTMLVideoElement;
  caption: HTMLElement;
  status: HTMLElement;
}

export function roleLabel(role: string): string {
  const key = `role.${role}` as MessageKey;
  return role === "host" || role === "guest" || role === "station" ? t(key) : role;
}

export class Stage {
  readonly element: HTMLElement;
  private readonly tiles = new Map<string, Tile>();
  private readonly grid: HTMLElement;
  private readonly empty: HTMLElement;

  constructor(local: MediaStream | null) {
    this.empty = h("p", { class: "hint" }, t("call.alone"));
    this.grid = h("div", { class: "grid" });
    const own = h("video", {
      class: "self",
      autoplay: true,
      playsinline: true,
      "aria-label": t("call.you"),
    });
    own.muted = true; // never play our own microphone back
    if (local) own.srcObject = local;
    this.element = h(
      "div",
      { class: "stage" },
      this.empty,
      this.grid,
      h("figure", { class: "tile self-tile" }, own, h("figcaption", {}, t("call.you"))),
    );
  }

  setPeers(peers: Participant[]): void {
    const ids = new Set(peers.map((p) => p.id));
    for (const [id, tile] of this.tiles) {
      if (!ids.has(id)) {
        tile.figure.remove();
        this.tiles.delete(id);
      }
    }
    for (const peer of peers) {
      const tile = this.tiles.get(peer.id) ?? this.addTile(peer.id);
      tile.caption.textContent = `${peer.name || "?"} (${roleLabel(peer.role)})`;
    }
    this.empty.hidden = peers.length > 0;
    this.grid.dataset.count = String(peers.length);
  }

  setMedia(peer: string, stream: MediaStream): void {
    const tile = this.tiles.get(peer) ?? this.addTile(peer);
    if (tile.video.srcObject !== stream) tile.video.srcObject = stream;
    tile.figure.classList.toggle("no-video", stream.getVideoTracks().length === 0);
    this.play(tile);
  }

  setPeerState(peer: string, state: RTCIceConnectionState): void {
    const tile = this.tiles.get(peer);
    if (!tile) return;
    const text =
      state === "new" || state === "checking"
        ? t("call.connecting.peer")
        : state === "disconnected" || state === "failed"
          ? t("call.peer.reconnecting")
          : "";
    tile.status.textContent = text;
    tile.status.hidden = text === "";
    tile.figure.dataset.ice = state;
  }

  private addTile(id: string): Tile {
    const video = h("video", { autoplay: true, playsinline: true });
    const caption = h("figcaption", {});
    const status = h("p", { class: "tile-status", role: "status" });
    status.hidden = true;
    const figure = h("figure", { class: "tile", "data-peer": id }, video, caption, status);
    this.grid.append(figure);
    const tile = { figure, video, caption, status };
    this.tiles.set(id, tile);
    return tile;
  }

  /** Autoplay with sound may be refused without a click: offer a button then. */
  private play(tile: Tile): void {
    tile.video.play().catch(() => {
      if (tile.figure.querySelector(".play")) return;
      const button = h("button", { type: "button", class: "play primary" }, t("call.play"));
      button.addEventListener("click", () => {
        void tile.video.play().then(() => button.remove(), () => undefined);
      });
      tile.figure.append(button);
    });
  }
}

/** Mute, camera and leave/end buttons; toggles work on the local tracks (no renegotiation). */
export function controls(
  local: MediaStream | null,
  finish: { label: MessageKey; run: () => void },
): HTMLElement {
  const bar = h("div", { class: "controls", role: "group", "aria-label": t("call.heading") });
  const toggle = (kind: "audio" | "video", off: MessageKey) => {
    const tracks = local ? (kind === "audio" ? local.getAudioTracks() : local.getVideoTracks()) : [];
    const button = h("button", { type: "button", class: "toggle", "aria-pressed": "false" }, t(off));
    if (tracks.length === 0) button.disabled = true;
    button.addEventListener("click", () => {
      const enabled = !tracks.every((track) => track.enabled);
      tracks.forEach((track) => (track.enabled = enabled));
      // A constant label ("Mikrofon aus") and aria-pressed for its state (WAI-ARIA toggle button).
      button.setAttribute("aria-pressed", String(!enabled));
    });
    return button;
  };
  bar.append(
    toggle("audio", "call.mute"),
    toggle("video", "call.camera.off"),
    h("button", { type: "button", class: "danger", onclick: () => finish.run() }, t(finish.label)),
  );
  return bar;
}
