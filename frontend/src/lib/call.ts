// A call: signalling socket + room state machine + WebRTC mesh, wired together.
import { Mesh, type MeshEvents } from "./mesh";
import type { ServerMessage } from "./protocol";
import { initialState, reduce, type Effect, type RoomEvent, type RoomState } from "./room";
import { Signalling, signallingUrl, type SocketFactory } from "./signalling";
import { summarise, type Quality, type Sample, type StatsEntry } from "./stats";

export interface CallOptions {
  room: string;
  token: string;
  name?: string | undefined;
  local: MediaStream | null;
  socket?: SocketFactory;
  changed(state: RoomState): void;
  announce?(effect: Extract<Effect, { kind: "announce" }>): void;
  media: MeshEvents;
}

export class Call {
  state: RoomState = initialState;
  private mesh: Mesh | null = null;
  private signalling: Signalling | null = null;
  // Negotiation steps run one after another: an answer must not overtake its offer.
  private queue: Promise<void> = Promise.resolve();
  private readonly samples = new Map<string, Sample>();

  constructor(private readonly options: CallOptions) {}

  start(): void {
    const factory = this.options.socket ?? ((url: string) => new WebSocket(url));
    const hello = {
      type: "hello" as const,
      room: this.options.room,
      token: this.options.token,
      ...(this.options.name ? { name: this.options.name } : {}),
    };
    this.signalling = new Signalling(factory(signallingUrl(location)), hello, {
      message: (m) => this.receive(m),
      closed: () => this.apply({ type: "socket-closed" }),
    });
  }

  admit(participant: string): void {
    this.signalling?.send({ type: "admit", participant });
  }

  leave(): void {
    this.signalling?.close({ type: "leave" });
    this.apply({ type: "self-left" });
  }

  /** Host only: the server answers everyone with "ended". */
  end(): void {
    this.signalling?.send({ type: "end" });
  }

  chat(text: string): number {
    return this.mesh?.broadcast("chat", text) ?? 0;
  }

  peers(): string[] {
    return this.mesh?.peers() ?? [];
  }

  connection(peer: string): RTCPeerConnection | undefined {
    return this.mesh?.connection(peer);
  }

  /** Quality figures for one peer since the last call of this method. */
  async quality(peer: string): Promise<Quality | null> {
    const pc = this.mesh?.connection(peer);
    if (!pc) return null;
    const report = await pc.getStats();
    const entries: StatsEntry[] = [];
    report.forEach((value: StatsEntry) => entries.push(value));
    const quality = summarise(entries, this.samples.get(peer) ?? null);
    this.samples.set(peer, quality.sample);
    return quality;
  }

  private receive(message: ServerMessage): void {
    if (message.type === "offer" || message.type === "answer" || message.type === "candidate") {
      this.enqueue(() => this.mesh?.signal(message));
      return;
    }
    this.apply(message);
  }

  private apply(event: RoomEvent): void {
    const [state, effects] = reduce(this.state, event);
    this.state = state;
    if (this.mesh === null && state.me !== null && (state.phase === "waiting" || state.phase === "in-call")) {
      this.mesh = new Mesh({ iceServers: state.iceServers }, (m) => this.signalling?.send(m), this.options.local, this.options.media);
    }
    for (const effect of effects) this.run(effect);
    this.options.changed(state);
  }

  private run(effect: Effect): void {
    switch (effect.kind) {
      case "offer":
        this.enqueue(() => this.mesh?.offer(effect.peer));
        break;
      case "close-peer":
        this.samples.delete(effect.peer);
        this.mesh?.close(effect.peer);
        break;
      case "close-all":
        this.samples.clear();
        this.mesh?.closeAll();
        break;
      case "announce":
        this.options.announce?.(effect);
        break;
    }
  }

  private enqueue(step: () => Promise<void> | undefined): void {
    this.queue = this.queue.then(step).catch((e: unknown) => console.warn("negotiation", e));
  }
}

declare global {
  interface Window {
    /** The page's call, for browser tests (Playwright reads getStats() through it). */
    medikusCall?: Call;
  }
}
