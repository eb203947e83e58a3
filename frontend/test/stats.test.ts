import { describe, expect, it } from "vitest";
import { formatQuality, grade, summarise, type StatsEntry } from "../src/lib/stats";

function report(at: number, received: number, lost: number, bytesIn: number, bytesOut: number): StatsEntry[] {
  return [
    { type: "candidate-pair", timestamp: at, state: "succeeded", nominated: true, currentRoundTripTime: 0.042 },
    {
      type: "inbound-rtp",
      kind: "video",
      timestamp: at,
      packetsReceived: received,
      packetsLost: lost,
      bytesReceived: bytesIn,
      framesPerSecond: 24,
      frameWidth: 640,
      frameHeight: 480,
    },
    { type: "inbound-rtp", kind: "audio", timestamp: at, packetsReceived: 0, packetsLost: 0, bytesReceived: 0 },
    { type: "outbound-rtp", kind: "video", timestamp: at, bytesSent: bytesOut },
  ];
}

describe("summarise", () => {
  it("takes RTT, fps and resolution from the report; no bitrate without a previous sample", () => {
    const q = summarise(report(1000, 980, 20, 50_000, 40_000), null);
    expect(q.rttMs).toBeCloseTo(42);
    expect(q.fps).toBe(24);
    expect([q.width, q.height]).toEqual([640, 480]);
    expect(q.lossPercent).toBeCloseTo(2);
    expect(q.inKbps).toBeNull();
  });

  it("computes bitrate and loss over the interval since the previous sample", () => {
    const first = summarise(report(1000, 1000, 0, 100_000, 50_000), null);
    const q = summarise(report(3000, 1990, 10, 350_000, 300_000), first.sample);
    expect(q.inKbps).toBeCloseTo(1000); // 250 kB in 2 s
    expect(q.outKbps).toBeCloseTo(1000);
    expect(q.lossPercent).toBeCloseTo(1); // 10 lost of 1000 in the interval
    expect(q.grade).toBe("good");
  });

  it("falls back to remote-inbound RTT and says nothing about an empty report", () => {
    expect(summarise([{ type: "remote-inbound-rtp", roundTripTime: 0.2 }], null).rttMs).toBeCloseTo(200);
    const empty = summarise([], null);
    expect([empty.rttMs, empty.lossPercent, empty.fps, empty.grade]).toEqual([null, null, null, "unknown"]);
  });
});

describe("grade and format", () => {
  it("grades by round trip and loss", () => {
    expect(grade(80, 0.5)).toBe("good");
    expect(grade(500, 1)).toBe("fair");
    expect(grade(100, 12)).toBe("poor");
  });

  it("formats German numbers and units", () => {
    const q = summarise(report(1000, 980, 20, 0, 0), null);
    const f = formatQuality({ ...q, inKbps: 1530, outKbps: 412.4 }, "de-DE");
    expect(f).toEqual({
      rtt: "42 ms",
      loss: "2,0 %",
      fps: "24",
      inBitrate: "1,5 Mbit/s",
      outBitrate: "412 kbit/s",
      resolution: "640×480",
    });
    expect(formatQuality(summarise([], null), "de-DE", "–").rtt).toBe("–");
  });
});
