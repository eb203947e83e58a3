// One RTCPeerConnection per other participant (full mesh, ≤ 4 people). The side that entered the
// call later offers (design_video.md); the offerer also restarts ICE when the path breaks.
import { candidateInit, type CandidateInit, type ClientMessage, type ServerMessage } from "./protocol";

export const CHANNELS = ["vitals", "chat"] as const;
export type ChannelLabel = (typeof CHANNELS)[number];

/** How long "disconnected" may last before the offerer restarts ICE (it often heals itself). */
export const DISCONNECTED_GRACE_MS = 2500;

export interface MeshEvents {
  media(peer: string, stream: MediaStream): void;
  state(peer: string, state: RTCIceConnectionState): void;
  channelMessage(peer: string, label: string, data: string): void;
  channelOpen(peer: string, label: string): void;
}

interface Link {
  pc: RTCPeerConnection;
  offerer: boolean;
  remote: MediaStream;
  pending: CandidateInit[];
  tracksAdded: boolean;
  channels: Map<string, RTCDataChannel>;
  restartTimer: ReturnType<typeof setTimeout> | null;
}

/** Whether this side should restart ICE for a connection in this state. */
export function needsIceRestart(offerer: boolean, state: RTCIceConnectionState): boolean {
  return offerer && (state === "failed" || state === "disconnected");
}

export class Mesh {
  private readonly links = new Map<string, Link>();
  private readonly onOnline = () => this.restartAll();

  constructor(
    private readonly config: RTCConfiguration,
    private readonly send: (message: ClientMessage) => void,
    private readonly local: MediaStream | null,
    private readonly events: MeshEvents,
  ) {
    // A network change (Wi-Fi ↔ mobile) shows up as "online"; don't wait for ICE to notice.
    window.addEventListener("online", this.onOnline);
  }

  peers(): string[] {
    return [...this.links.keys()];
  }

  connection(peer: string): RTCPeerConnection | undefined {
    return this.links.get(peer)?.pc;
  }

  async offer(peer: string): Promise<void> {
    const link = this.link(peer, true);
    for (const label of CHANNELS) this.attach(peer, link, link.pc.createDataChannel(label, { ordered: true }));
    this.addTracks(link);
    const kinds = new Set(link.pc.getTransceivers().map((t) => t.receiver.track.kind));
    for (const kind of ["audio", "video"]) {
      if (!kinds.has(kind)) link.pc.addTransceiver(kind, { direction: "recvonly" });
    }
    await this.sendOffer(peer, link, false);
  }

  async signal(message: Extract<ServerMessage, { type: "offer" | "answer" | "candidate" }>): Promise<void> {
    const peer = message.from;
    if (message.type === "offer") {
      const link = this.links.get(peer) ?? this.link(peer, false);
      if (link.pc.signalingState === "have-local-offer") {
        await link.pc.setLocalDescription({ type: "rollback" });
      }
      await link.pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
      await this.flush(link);
      this.addTracks(link); // after the offer, so the tracks reuse its transceivers
      await link.pc.setLocalDescription(await link.pc.createAnswer());
      this.send({ type: "answer", to: peer, sdp: link.pc.localDescription?.sdp ?? "" });
      return;
    }
    const link = this.links.get(peer);
    if (!link) return;
    if (message.type === "answer") {
      if (link.pc.signalingState !== "have-local-offer") return;
      await link.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      await this.flush(link);
      return;
    }
    if (message.candidate === null) {
      if (link.pc.remoteDescription) await link.pc.addIceCandidate().catch(() => undefined);
      return;
    }
    if (!link.pc.remoteDescription) {
      link.pending.push(message.candidate);
      return;
    }
    await link.pc.addIceCandidate(message.candidate).catch((e: unknown) => console.warn("candidate", e));
  }

  /** Text to every peer whose channel of that label is open; returns how many got it. */
  broadcast(label: ChannelLabel, text: string): number {
    let sent = 0;
    for (const link of this.links.values()) {
      const channel = link.channels.get(label);
      if (channel?.readyState === "open") {
        channel.send(text);
        sent++;
      }
    }
    return sent;
  }

  close(peer: string): void {
    const link = this.links.get(peer);
    if (!link) return;
    if (link.restartTimer) clearTimeout(link.restartTimer);
    link.pc.close();
    this.links.delete(peer);
  }

  closeAll(): void {
    for (const peer of [...this.links.keys()]) this.close(peer);
    window.removeEventListener("online", this.onOnline);
  }

  async restartIce(peer: string): Promise<void> {
    const link = this.links.get(peer);
    if (!link?.offerer || link.pc.signalingState !== "stable") return;
    link.pc.restartIce();
    await this.sendOffer(peer, link, true);
  }

  private restartAll(): void {
    for (const peer of this.links.keys()) void this.restartIce(peer).catch((e: unknown) => console.warn(e));
  }

  private link(peer: string, offerer: boolean): Link {
    this.close(peer);
    const pc = new RTCPeerConnection(this.config);
    const link: Link = {
      pc,
      offerer,
      remote: new MediaStream(),
      pending: [],
      tracksAdded: false,
      channels: new Map(),
      restartTimer: null,
    };
    this.links.set(peer, link);
    pc.addEventListener("icecandidate", (e) => {
      this.send({ type: "candidate", to: peer, candidate: e.candidate ? candidateInit(e.candidate) : null });
    });
    pc.addEventListener("track", (e) => {
      link.remote.addTrack(e.track);
      e.track.addEventListener("ended", () => link.remote.removeTrack(e.track));
      this.events.media(peer, link.remote);
    });
    pc.addEventListener("datachannel", (e) => this.attach(peer, link, e.channel));
    pc.addEventListener("iceconnectionstatechange", () => this.iceState(peer, link));
    return link;
  }

  private iceState(peer: string, link: Link): void {
    const state = link.pc.iceConnectionState;
    this.events.state(peer, state);
    if (link.restartTimer) {
      clearTimeout(link.restartTimer);
      link.restartTimer = null;
    }
    if (!needsIceRestart(link.offerer, state)) return;
    const delay = state === "failed" ? 0 : DISCONNECTED_GRACE_MS;
    link.restartTimer = setTimeout(() => {
      link.restartTimer = null;
      if (needsIceRestart(link.offerer, link.pc.iceConnectionState)) {
        void this.restartIce(peer).catch((e: unknown) => console.warn("ICE restart", e));
      }
    }, delay);
  }

  private addTracks(link: Link): void {
    if (link.tracksAdded || !this.local) return;
    for (const track of this.local.getTracks()) link.pc.addTrack(track, this.local);
    link.tracksAdded = true;
  }

  private attach(peer: string, link: Link, channel: RTCDataChannel): void {
    link.channels.set(channel.label, channel);
    channel.addEventListener("open", () => this.events.channelOpen(peer, channel.label));
    channel.addEventListener("message", (e: MessageEvent) => {
      if (typeof e.data === "string") this.events.channelMessage(peer, channel.label, e.data);
    });
  }

  private async flush(link: Link): Promise<void> {
    const pending = link.pending.splice(0);
    for (const c of pending) {
      await link.pc.addIceCandidate(c).catch((e: unknown) => console.warn("candidate", e));
    }
  }

  private async sendOffer(peer: string, link: Link, iceRestart: boolean): Promise<void> {
    await link.pc.setLocalDescription(await link.pc.createOffer({ iceRestart }));
    this.send({ type: "offer", to: peer, sdp: link.pc.localDescription?.sdp ?? "" });
  }
}
