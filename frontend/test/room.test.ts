import { describe, expect, it } from "vitest";
import type { Participant, ServerMessage } from "../src/lib/protocol";
import { initialState, reduce, type Effect, type RoomEvent, type RoomState } from "../src/lib/room";

const doctor: Participant = { id: "p-doc", name: "Dr. Weber", role: "host" };
const patient: Participant = { id: "p-pat", name: "Frau Schulz", role: "guest" };
const station: Participant = { id: "p-sta", name: "Station Nord", role: "station" };

function run(events: RoomEvent[]): { state: RoomState; effects: Effect[] } {
  let state = initialState;
  const effects: Effect[] = [];
  for (const event of events) {
    const [next, more] = reduce(state, event);
    state = next;
    effects.push(...more);
  }
  return { state, effects };
}

const welcome = (you: Participant, state: "waiting" | "in-call", participants: Participant[] = []): ServerMessage => ({
  type: "welcome",
  you,
  state,
  participants,
  iceServers: [],
});

describe("room state machine", () => {
  it("host: enters the call, sees the waiting patient, admits, then the patient joins", () => {
    const { state, effects } = run([
      welcome(doctor, "in-call", [doctor]),
      { type: "waiting", participant: patient },
      { type: "joined", participant: patient },
    ]);
    expect(state.phase).toBe("in-call");
    expect(state.waiting).toEqual([]);
    expect(state.peers.map((p) => p.id)).toEqual([patient.id]);
    // the patient is the newcomer: the host never offers
    expect(effects.filter((e) => e.kind === "offer")).toEqual([]);
  });

  it("guest: waits, and once admitted offers to everyone already in the call (mesh rule)", () => {
    const { state, effects } = run([
      welcome(patient, "waiting"),
      { type: "admitted", peers: [doctor, station] },
    ]);
    expect(state.phase).toBe("in-call");
    expect(effects.filter((e) => e.kind === "offer")).toEqual([
      { kind: "offer", peer: doctor.id },
      { kind: "offer", peer: station.id },
    ]);
  });

  it("a host re-entering a running call offers to those in it, not to those waiting", () => {
    const { state, effects } = run([
      welcome(doctor, "in-call", [
        { ...patient, state: "in-call" },
        { ...station, state: "waiting" },
      ]),
    ]);
    expect(effects).toEqual([{ kind: "offer", peer: patient.id }]);
    expect(state.waiting.map((p) => p.id)).toEqual([station.id]);
  });

  it("left closes that peer's connection only", () => {
    const { state, effects } = run([
      welcome(patient, "waiting"),
      { type: "admitted", peers: [doctor, station] },
      { type: "left", participant: station.id },
    ]);
    expect(state.peers).toEqual([doctor]);
    expect(effects).toContainEqual({ kind: "close-peer", peer: station.id });
  });

  it("ended is final: later messages change nothing", () => {
    const { state, effects } = run([
      welcome(patient, "waiting"),
      { type: "ended" },
      { type: "admitted", peers: [doctor] },
      { type: "socket-closed" },
    ]);
    expect(state.phase).toBe("ended");
    expect(effects).toEqual([{ kind: "close-all" }]);
  });

  it("fatal errors fail the call; others are only remembered", () => {
    const soft = run([welcome(doctor, "in-call"), { type: "error", code: "unknown-peer", message: "x" }]);
    expect(soft.state.phase).toBe("in-call");
    expect(soft.state.error).toBe("unknown-peer");
    const hard = run([{ type: "error", code: "room-full", message: "voll" }, { type: "socket-closed" }]);
    expect(hard.state.phase).toBe("failed");
    expect(hard.state.error).toBe("room-full");
  });

  it("a dropped socket fails the call with a connection error", () => {
    const { state } = run([welcome(patient, "waiting"), { type: "socket-closed" }]);
    expect(state).toMatchObject({ phase: "failed", error: "connection" });
  });
});
