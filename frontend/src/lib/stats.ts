// Call-quality figures from RTCPeerConnection.getStats() (https://www.w3.org/TR/webrtc-stats/).
// Pure: takes the report's values and the previous sample, so rates come from deltas.

export interface StatsEntry {
  type: string;
  id?: string;
  timestamp?: number;
  [key: string]: unknown;
}

export interface Sample {
  timestamp: number; // ms
  bytesReceived: number;
  bytesSent: number;
  packetsReceived: number;
  packetsLost: number;
}

export interface Quality {
  rttMs: number | null;
  lossPercent: number | null;
  fps: number | null;
  inKbps: number | null;
  outKbps: number | null;
  width: number | null;
  height: number | null;
  grade: "good" | "fair" | "poor" | "unknown";
  sample: Sample;
}

function num(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function sum(values: (number | null)[]): number {
  return values.reduce<number>((total, v) => total + (v ?? 0), 0);
}

/** Summarises one getStats() report; ``previous`` (the last sample) gives bitrate and recent loss. */
export function summarise(entries: Iterable<StatsEntry>, previous: Sample | null): Quality {
  const all = [...entries];
  const inbound = all.filter((e) => e.type === "inbound-rtp");
  const outbound = all.filter((e) => e.type === "outbound-rtp");
  const video = inbound.filter((e) => (e.kind ?? e.mediaType) === "video");
  const pair =
    all.find((e) => e.type === "candidate-pair" && e.nominated === true && e.state === "succeeded") ??
    all.find((e) => e.type === "candidate-pair" && e.state === "succeeded");
  const remoteRtt = all
    .filter((e) => e.type === "remote-inbound-rtp")
    .map((e) => num(e.roundTripTime))
    .find((v) => v !== null);
  const rttSeconds = num(pair?.currentRoundTripTime) ?? remoteRtt ?? null;

  const timestamp = Math.max(0, ...all.map((e) => num(e.timestamp) ?? 0));
  const sample: Sample = {
    timestamp,
    bytesReceived: sum(inbound.map((e) => num(e.bytesReceived))),
    bytesSent: sum(outbound.map((e) => num(e.bytesSent))),
    packetsReceived: sum(inbound.map((e) => num(e.packetsReceived))),
    packetsLost: sum(inbound.map((e) => num(e.packetsLost))),
  };

  const seconds = previous ? (timestamp - previous.timestamp) / 1000 : 0;
  const rate = (now: number, before: number) =>
    seconds > 0 && now >= before ? ((now - before) * 8) / 1000 / seconds : null;
  const inKbps = previous ? rate(sample.bytesReceived, previous.bytesReceived) : null;
  const outKbps = previous ? rate(sample.bytesSent, previous.bytesSent) : null;

  // Loss over the last interval when we have one, otherwise since the start of the call.
  const lost = sample.packetsLost - (previous?.packetsLost ?? 0);
  const received = sample.packetsReceived - (previous?.packetsReceived ?? 0);
  const lossPercent =
    inbound.length === 0 || lost + received <= 0 ? null : (Math.max(0, lost) / (lost + received)) * 100;

  const first = video[0];
  const fps = first ? num(first.framesPerSecond) : null;
  const rttMs = rttSeconds === null ? null : rttSeconds * 1000;
  return {
    rttMs,
    lossPercent,
    fps,
    inKbps,
    outKbps,
    width: first ? num(first.frameWidth) : null,
    height: first ? num(first.frameHeight) : null,
    grade: grade(rttMs, lossPercent),
    sample,
  };
}

/** ITU-T G.114: ≤150 ms one-way is transparent, >400 ms unusable; loss above a few % is audible. */
export function grade(rttMs: number | null, lossPercent: number | null): Quality["grade"] {
  if (rttMs === null && lossPercent === null) return "unknown";
  const rtt = rttMs ?? 0;
  const loss = lossPercent ?? 0;
  if (rtt <= 300 && loss < 2) return "good";
  if (rtt <= 800 && loss < 8) return "fair";
  return "poor";
}

export interface FormattedQuality {
  rtt: string;
  loss: string;
  fps: string;
  inBitrate: string;
  outBitrate: string;
  resolution: string;
}

/** Figures for display in a locale ("de-DE": decimal comma, thin spacing as Intl does it). */
export function formatQuality(q: Quality, locale: string, unknown = "–"): FormattedQuality {
  const whole = new Intl.NumberFormat(locale, { maximumFractionDigits: 0 });
  const one = new Intl.NumberFormat(locale, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const kbps = (v: number | null) =>
    v === null ? unknown : v >= 1000 ? `${one.format(v / 1000)} Mbit/s` : `${whole.format(v)} kbit/s`;
  return {
    rtt: q.rttMs === null ? unknown : `${whole.format(q.rttMs)} ms`,
    loss: q.lossPercent === null ? unknown : `${one.format(q.lossPercent)} %`,
    fps: q.fps === null ? unknown : whole.format(q.fps),
    inBitrate: kbps(q.inKbps),
    outBitrate: kbps(q.outKbps),
    resolution: q.width === null || q.height === null ? unknown : `${q.width}×${q.height}`,
  };
}
