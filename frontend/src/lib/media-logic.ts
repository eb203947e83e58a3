// Pure parts of camera/microphone handling: friendly error keys, level meter arithmetic.
import type { MessageKey } from "./i18n";

/** getUserMedia's DOMException name → a message people can act on. */
export function mediaErrorKey(name: string | undefined): MessageKey {
  switch (name) {
    case "NotAllowedError":
    case "SecurityError":
    case "PermissionDeniedError":
      return "media.denied";
    case "NotFoundError":
    case "DevicesNotFoundError":
    case "OverconstrainedError":
      return "media.notfound";
    case "NotReadableError":
    case "TrackStartError":
    case "AbortError":
      return "media.inuse";
    case "TypeError": // navigator.mediaDevices missing: http on a non-local host
      return "media.insecure";
    default:
      return "media.other";
  }
}

/** Microphone level 0…1 from time-domain samples (RMS, scaled so speech fills the meter). */
export function rmsLevel(samples: ArrayLike<number>): number {
  if (samples.length === 0) return 0;
  let total = 0;
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i] ?? 0;
    total += s * s;
  }
  return Math.min(1, Math.sqrt(total / samples.length) * 4);
}
