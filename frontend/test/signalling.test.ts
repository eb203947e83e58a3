import { describe, expect, it } from "vitest";
import { mediaErrorKey, rmsLevel } from "../src/lib/media-logic";
import type { ServerMessage } from "../src/lib/protocol";
import { Signalling, signallingUrl, type SocketLike } from "../src/lib/signalling";

/** An in-memory WebSocket: records frames, lets the test play the server. */
class FakeSocket implements SocketLike {
  readyState = 0;
  sent: string[] = [];
  private listeners = new Map<string, ((event: Event) => void)[]>();
  addEventListener(type: string, listener: (event: Event) => void): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
  }
  send(data: string): void {
    this.sent.push(data);
  }
  close(): void {
    this.readyState = 3;
  }
  emit(type: string, data?: string): void {
    if (type === "open") this.readyState = 1;
    if (type === "close") this.readyState = 3;
    for (const l of this.listeners.get(type) ?? []) l({ data } as unknown as Event);
  }
}

describe("Signalling", () => {
  it("sends hello first, passes server messages on, reports an unexpected close once", () => {
    const socket = new FakeSocket();
    const received: ServerMessage[] = [];
    let closed = 0;
    const signalling = new Signalling(socket, { type: "hello", room: "7", token: "t" }, {
      message: (m) => received.push(m),
      closed: () => closed++,
    });
    signalling.send({ type: "leave" }); // not open yet: dropped, never before hello
    socket.emit("open");
    expect(socket.sent.map((f) => JSON.parse(f))).toEqual([{ type: "hello", room: "7", token: "t" }]);
    socket.emit("message", '{"type":"ended"}');
    socket.emit("message", "garbage");
    expect(received).toEqual([{ type: "ended" }]);
    socket.emit("error");
    socket.emit("close");
    expect(closed).toBe(1);
  });

  it("a close we asked for is not reported as a failure", () => {
    const socket = new FakeSocket();
    let closed = 0;
    const signalling = new Signalling(socket, { type: "hello", room: "7", token: "t" }, {
      message: () => undefined,
      closed: () => closed++,
    });
    socket.emit("open");
    signalling.close({ type: "leave" });
    socket.emit("close");
    expect(JSON.parse(socket.sent.at(-1) ?? "{}")).toEqual({ type: "leave" });
    expect(closed).toBe(0);
  });

  it("uses wss on https pages and ws otherwise", () => {
    expect(signallingUrl({ protocol: "https:", host: "praxis.example" })).toBe("wss://praxis.example/video/ws");
    expect(signallingUrl({ protocol: "http:", host: "127.0.0.1:8000" })).toBe("ws://127.0.0.1:8000/video/ws");
  });
});

describe("media helpers", () => {
  it("maps getUserMedia failures to actionable messages", () => {
    expect(mediaErrorKey("NotAllowedError")).toBe("media.denied");
    expect(mediaErrorKey("NotReadableError")).toBe("media.inuse");
    expect(mediaErrorKey("NotFoundError")).toBe("media.notfound");
    expect(mediaErrorKey(undefined)).toBe("media.other");
  });

  it("measures silence as 0 and loud signals as full scale", () => {
    expect(rmsLevel(new Float32Array(128))).toBe(0);
    expect(rmsLevel(new Float32Array(128).fill(0.5))).toBe(1);
    expect(rmsLevel(new Float32Array(128).fill(0.05))).toBeCloseTo(0.2);
  });
});
