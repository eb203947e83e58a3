// Signalling messages of /video/ws (notes/design_video.md, "Wire protocol"): JSON text frames.

export const MAX_FRAME_BYTES = 64 * 1024;

export type Role = "host" | "guest" | "station";
export type ParticipantState = "waiting" | "in-call";

export interface Participant {
  id: string;
  name: string;
  role: Role;
  state?: ParticipantState;
}

export interface CandidateInit {
  candidate: string;
  sdpMid: string | null;
  sdpMLineIndex: number | null;
}

export type ErrorCode =
  | "bad-message"
  | "unauthorized"
  | "forbidden"
  | "room-full"
  | "room-ended"
  | "rate-limited"
  | "unknown-peer";

/** Codes after which the server closes the socket (1008). */
export const FATAL_CODES: ReadonlySet<string> = new Set([
  "unauthorized",
  "room-full",
  "room-ended",
  "rate-limited",
]);

export type ServerMessage =
  | {
      type: "welcome";
      you: Participant;
      state: ParticipantState;
      participants: Participant[];
      iceServers: RTCIceServer[];
    }
  | { type: "waiting"; participant: Participant }
  | { type: "admitted"; peers: Participant[] }
  | { type: "joined"; participant: Participant }
  | { type: "left"; participant: string }
  | { type: "ended" }
  | { type: "offer"; from: string; sdp: string }
  | { type: "answer"; from: string; sdp: string }
  | { type: "candidate"; from: string; candidate: CandidateInit | null }
  | { type: "error"; code: string; message: string };

export type ClientMessage =
  | { type: "hello"; room: string; token: string; name?: string }
  | { type: "admit"; participant: string }
  | { type: "offer"; to: string; sdp: string }
  | { type: "answer"; to: string; sdp: string }
  | { type: "candidate"; to: string; candidate: CandidateInit | null }
  | { type: "leave" }
  | { type: "end" };

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function text(value: unknown): string | null {
  return typeof value === "string" && value !== "" ? value : null;
}

function role(value: unknown): Role {
  return value === "host" || value === "station" ? value : "guest";
}

export function parseParticipant(value: unknown): Participant | null {
  if (!isObject(value)) return null;
  const id = text(value.id);
  if (id === null) return null;
  const participant: Participant = {
    id,
    name: typeof value.name === "string" ? value.name : "",
    role: role(value.role),
  };
  if (value.state === "waiting" || value.state === "in-call") participant.state = value.state;
  return participant;
}

function participants(value: unknown): Participant[] {
  if (!Array.isArray(value)) return [];
  return value.map(parseParticipant).filter((p): p is Participant => p !== null);
}

function iceServers(value: unknown): RTCIceServer[] {
  if (!Array.isArray(value)) return [];
  return value.filter(
    (s): s is RTCIceServer =>
      isObject(s) && (typeof s.urls === "string" || Array.isArray(s.urls)),
  );
}

function candidate(value: unknown): CandidateInit | null | undefined {
  if (value === null) return null;
  if (!isObject(value) || typeof value.candidate !== "string") return undefined;
  return {
    candidate: value.candidate,
    sdpMid: typeof value.sdpMid === "string" ? value.sdpMid : null,
    sdpMLineIndex: typeof value.sdpMLineIndex === "number" ? value.sdpMLineIndex : null,
  };
}

/** One server frame as a message, or null if it is not one we understand (ignored). */
export function parseServerMessage(raw: unknown): ServerMessage | null {
  if (typeof raw !== "string") return null;
  let data: unknown;
  try {
    data = JSON.parse(raw);
  } catch {
    return null;
  }
  if (!isObject(data)) return null;
  switch (data.type) {
    case "welcome": {
      const you = parseParticipant(data.you);
      if (you === null) return null;
      return {
        type: "welcome",
        you,
        state: data.state === "in-call" ? "in-call" : "waiting",
        participants: participants(data.participants),
        iceServers: iceServers(data.iceServers),
      };
    }
    case "waiting":
    case "joined": {
      const participant = parseParticipant(data.participant);
      return participant === null ? null : { type: data.type, participant };
    }
    case "admitted":
      return { type: "admitted", peers: participants(data.peers) };
    case "left": {
      const id = text(data.participant) ?? parseParticipant(data.participant)?.id ?? null;
      return id === null ? null : { type: "left", participant: id };
    }
    case "ended":
      return { type: "ended" };
    case "offer":
    case "answer": {
      const from = text(data.from);
      const sdp = text(data.sdp);
      return from === null || sdp === null ? null : { type: data.type, from, sdp };
    }
    case "candidate": {
      const from = text(data.from);
      const init = candidate(data.candidate);
      return from === null || init === undefined ? null : { type: "candidate", from, candidate: init };
    }
    case "error":
      return {
        type: "error",
        code: typeof data.code === "string" ? data.code : "bad-message",
        message: typeof data.message === "string" ? data.message : "",
      };
    default:
      return null;
  }
}

/** A client message as a frame; throws if it exceeds the server's frame limit. */
export function serialise(message: ClientMessage): string {
  const frame = JSON.stringify(message);
  if (new TextEncoder().encode(frame).length > MAX_FRAME_BYTES) {
    throw new RangeError(`signalling frame larger than ${MAX_FRAME_BYTES} bytes`);
  }
  return frame;
}

/** The three fields the server relays (no usernameFragment: the protocol names exactly these). */
export function candidateInit(c: {
  candidate: string;
  sdpMid?: string | null;
  sdpMLineIndex?: number | null;
}): CandidateInit {
  return { candidate: c.candidate, sdpMid: c.sdpMid ?? null, sdpMLineIndex: c.sdpMLineIndex ?? null };
}
