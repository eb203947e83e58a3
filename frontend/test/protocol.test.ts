import { describe, expect, it } from "vitest";
import { MAX_FRAME_BYTES, parseServerMessage, serialise } from "../src/lib/protocol";

describe("parseServerMessage", () => {
  it("reads a welcome with participants and ICE servers", () => {
    const raw = JSON.stringify({
      type: "welcome",
      you: { id: "p-1", name: "Dr. Weber", role: "host" },
      state: "in-call",
      participants: [{ id: "p-2", name: "Frau Schulz", role: "guest", state: "waiting" }, { bogus: true }],
      iceServers: [{ urls: "turn:turn.example:443", username: "u", credential: "c" }, { nope: 1 }],
    });
    const message = parseServerMessage(raw);
    expect(message).toEqual({
      type: "welcome",
      you: { id: "p-1", name: "Dr. Weber", role: "host" },
      state: "in-call",
      participants: [{ id: "p-2", name: "Frau Schulz", role: "guest", state: "waiting" }],
      iceServers: [{ urls: "turn:turn.example:443", username: "u", credential: "c" }],
    });
  });

  it("keeps a null candidate (end of candidates) and drops malformed ones", () => {
    expect(parseServerMessage('{"type":"candidate","from":"p-2","candidate":null}')).toEqual({
      type: "candidate",
      from: "p-2",
      candidate: null,
    });
    expect(parseServerMessage('{"type":"candidate","from":"p-2","candidate":{"sdpMid":"0"}}')).toBeNull();
  });

  it.each(["not json", "[]", '{"type":"mystery"}', '{"type":"offer","from":"p-2"}', '{"type":"waiting"}'])(
    "ignores %s",
    (raw) => expect(parseServerMessage(raw)).toBeNull(),
  );
});

describe("serialise", () => {
  it("refuses frames over the server's 64 KiB limit", () => {
    const sdp = "x".repeat(MAX_FRAME_BYTES);
    expect(() => serialise({ type: "offer", to: "p-1", sdp })).toThrow(RangeError);
    expect(JSON.parse(serialise({ type: "admit", participant: "p-9" }))).toEqual({ type: "admit", participant: "p-9" });
  });
});
