// The signalling WebSocket (/video/ws, same origin): hello first, then JSON text frames.
import { parseServerMessage, serialise, type ClientMessage, type ServerMessage } from "./protocol";

export interface SocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "open" | "close" | "error" | "message", listener: (event: Event) => void): void;
}

export type SocketFactory = (url: string) => SocketLike;

export function signallingUrl(loc: { protocol: string; host: string }): string {
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/video/ws`;
}

export interface SignallingHandlers {
  message(message: ServerMessage): void;
  closed(): void;
}

const OPEN = 1;

export class Signalling {
  private closedByUs = false;
  private done = false;

  constructor(
    private readonly socket: SocketLike,
    hello: Extract<ClientMessage, { type: "hello" }>,
    private readonly handlers: SignallingHandlers,
  ) {
    socket.addEventListener("open", () => socket.send(serialise(hello)));
    socket.addEventListener("message", (event) => {
      const message = parseServerMessage((event as MessageEvent).data);
      if (message !== null) handlers.message(message);
    });
    socket.addEventListener("close", () => this.finish());
    socket.addEventListener("error", () => this.finish());
  }

  send(message: ClientMessage): void {
    if (this.socket.readyState === OPEN) this.socket.send(serialise(message));
  }

  /** Say goodbye (leave or end) and close; no "closed" callback for a close we asked for. */
  close(last?: ClientMessage): void {
    this.closedByUs = true;
    if (last) this.send(last);
    this.socket.close(1000, "bye");
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    if (!this.closedByUs) this.handlers.closed();
  }
}

/** Connection check for the device test: can a WebSocket to the signalling server be opened?
 * Opens and closes without "hello", so nobody appears in the waiting room yet. */
export function probe(factory: SocketFactory, url: string, timeoutMs = 5000): Promise<boolean> {
  return new Promise((resolve) => {
    let socket: SocketLike;
    try {
      socket = factory(url);
    } catch {
      resolve(false);
      return;
    }
    const timer = setTimeout(() => {
      resolve(false);
      socket.close();
    }, timeoutMs);
    socket.addEventListener("open", () => {
      clearTimeout(timer);
      resolve(true);
      socket.close(1000, "probe");
    });
    const fail = () => {
      clearTimeout(timer);
      resolve(false);
    };
    socket.addEventListener("error", fail);
    socket.addEventListener("close", fail);
  });
}
