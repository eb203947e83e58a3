// The call as this browser sees it: a pure state machine over signalling events.
// Phases: connecting → waiting → in-call → ended | left | failed. Mesh rule (design_video.md):
// whoever enters the call sends the offers to everyone already in it; the others answer.
import { FATAL_CODES, type Participant, type ServerMessage } from "./protocol";

export type Phase = "connecting" | "waiting" | "in-call" | "ended" | "left" | "failed";

export interface RoomState {
  phase: Phase;
  me: Participant | null;
  iceServers: RTCIceServer[];
  /** Others in the call, in the order they entered. */
  peers: Participant[];
  /** Guests and stations waiting to be admitted (the host sees them). */
  waiting: Participant[];
  /** The last error from the server (code), fatal or not. */
  error: string | null;
  errorMessage: string | null;
}

export type Effect =
  | { kind: "offer"; peer: string }
  | { kind: "close-peer"; peer: string }
  | { kind: "close-all" }
  | { kind: "announce"; event: "joined" | "left" | "waiting"; participant: Participant };

export type RoomEvent =
  | ServerMessage
  | { type: "socket-closed" }
  | { type: "self-left" };

export const initialState: RoomState = {
  phase: "connecting",
  me: null,
  iceServers: [],
  peers: [],
  waiting: [],
  error: null,
  errorMessage: null,
};

const FINAL: ReadonlySet<Phase> = new Set(["ended", "left", "failed"]);

export function isFinal(phase: Phase): boolean {
  return FINAL.has(phase);
}

function without(list: Participant[], id: string): Participant[] {
  return list.filter((p) => p.id !== id);
}

function upsert(list: Participant[], participant: Participant): Participant[] {
  return list.some((p) => p.id === participant.id)
    ? list.map((p) => (p.id === participant.id ? participant : p))
    : [...list, participant];
}

export function reduce(state: RoomState, event: RoomEvent): [RoomState, Effect[]] {
  if (isFinal(state.phase)) return [state, []];
  switch (event.type) {
    case "welcome": {
      const others = event.participants.filter((p) => p.id !== event.you.id);
      const inCall = event.state === "in-call";
      const peers = inCall ? others.filter((p) => p.state !== "waiting") : [];
      const waiting = event.you.role === "host" ? others.filter((p) => p.state === "waiting") : [];
      const next: RoomState = {
        ...state,
        phase: inCall ? "in-call" : "waiting",
        me: event.you,
        iceServers: event.iceServers,
        peers,
        waiting,
      };
      return [next, peers.map((p) => ({ kind: "offer", peer: p.id }))];
    }
    case "waiting": {
      const participant = { ...event.participant, state: "waiting" as const };
      return [
        { ...state, waiting: upsert(state.waiting, participant) },
        [{ kind: "announce", event: "waiting", participant }],
      ];
    }
    case "admitted": {
      const peers = event.peers.filter((p) => p.id !== state.me?.id);
      return [
        { ...state, phase: "in-call", peers },
        peers.map((p) => ({ kind: "offer", peer: p.id })),
      ];
    }
    case "joined": {
      if (event.participant.id === state.me?.id) return [state, []];
      const participant = { ...event.participant, state: "in-call" as const };
      return [
        {
          ...state,
          peers: upsert(state.peers, participant),
          waiting: without(state.waiting, participant.id),
        },
        [{ kind: "announce", event: "joined", participant }],
      ];
    }
    case "left": {
      const gone =
        state.peers.find((p) => p.id === event.participant) ??
        state.waiting.find((p) => p.id === event.participant);
      const next = {
        ...state,
        peers: without(state.peers, event.participant),
        waiting: without(state.waiting, event.participant),
      };
      const effects: Effect[] = [{ kind: "close-peer", peer: event.participant }];
      if (gone && state.peers.includes(gone)) {
        effects.push({ kind: "announce", event: "left", participant: gone });
      }
      return [next, effects];
    }
    case "ended":
      return [{ ...state, phase: "ended", peers: [], waiting: [] }, [{ kind: "close-all" }]];
    case "self-left":
      return [{ ...state, phase: "left", peers: [], waiting: [] }, [{ kind: "close-all" }]];
    case "error": {
      const fatal = FATAL_CODES.has(event.code);
      const next = { ...state, error: event.code, errorMessage: event.message };
      if (!fatal) return [next, []];
      return [{ ...next, phase: "failed", peers: [], waiting: [] }, [{ kind: "close-all" }]];
    }
    case "socket-closed":
      return [
        { ...state, phase: "failed", error: state.error ?? "connection", peers: [], waiting: [] },
        [{ kind: "close-all" }],
      ];
    case "offer":
    case "answer":
    case "candidate":
      return [state, []]; // media negotiation: handled by the mesh
  }
}
