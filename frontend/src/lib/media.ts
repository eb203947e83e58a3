// Camera and microphone in the browser: local stream, level meter, speaker test tone.
import { mediaErrorKey, rmsLevel } from "./media-logic";
import type { MessageKey } from "./i18n";

export type LocalMedia = { ok: true; stream: MediaStream } | { ok: false; error: MessageKey };

const CONSTRAINTS: MediaStreamConstraints = {
  // Echo cancellation matters: patients sit in rooms with laptop speakers (video.md §3).
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24, max: 30 } },
};

export async function openLocalMedia(): Promise<LocalMedia> {
  if (!navigator.mediaDevices?.getUserMedia) return { ok: false, error: "media.insecure" };
  try {
    return { ok: true, stream: await navigator.mediaDevices.getUserMedia(CONSTRAINTS) };
  } catch (first) {
    // No camera (or it is busy) but a microphone works: audio alone is still a consultation.
    try {
      return { ok: true, stream: await navigator.mediaDevices.getUserMedia({ audio: CONSTRAINTS.audio }) };
    } catch {
      return { ok: false, error: mediaErrorKey((first as DOMException | undefined)?.name) };
    }
  }
}

/** Feeds a level 0…1 from the stream's microphone to ``update`` ~15 times a second. */
export function startLevelMeter(stream: MediaStream, update: (level: number) => void): () => void {
  if (stream.getAudioTracks().length === 0) return () => undefined;
  const context = new AudioContext();
  const source = context.createMediaStreamSource(stream);
  const analyser = context.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const timer = window.setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    update(rmsLevel(samples));
  }, 66);
  return () => {
    window.clearInterval(timer);
    source.disconnect();
    void context.close();
  };
}

/** A gentle 440 Hz tone for one second, for the speaker test. */
export async function playTestTone(): Promise<void> {
  const context = new AudioContext();
  const oscillator = context.createOscillator();
  const gain = context.createGain();
  oscillator.frequency.value = 440;
  gain.gain.setValueAtTime(0.0001, context.currentTime);
  gain.gain.exponentialRampToValueAtTime(0.3, context.currentTime + 0.05);
  gain.gain.exponentialRampToValueAtTime(0.0001, context.currentTime + 1);
  oscillator.connect(gain).connect(context.destination);
  oscillator.start();
  oscillator.stop(context.currentTime + 1.05);
  await new Promise<void>((resolve) => oscillator.addEventListener("ended", () => resolve()));
  await context.close();
}

export function stopMedia(stream: MediaStream | null): void {
  stream?.getTracks().forEach((track) => track.stop());
}
