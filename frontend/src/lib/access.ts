// How a patient gets into a room: the join link's fragment, or a grant id + phone code.
// The fragment (#…) never reaches the server's logs; the page removes it once read.

export interface JoinFragment {
  /** A short-lived access token, ready for "hello" (interim: until the redemption endpoint exists). */
  token: string | null;
  /** A single-use join-link token, to be redeemed for an access token. */
  link: string | null;
  room: string | null;
  grant: string | null;
  name: string | null;
}

export function parseFragment(hash: string): JoinFragment {
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  const get = (key: string) => {
    const value = params.get(key)?.trim();
    return value ? value : null;
  };
  return {
    token: get("token"),
    link: get("link"),
    room: get("room"),
    grant: get("grant"),
    name: get("name"),
  };
}

/** The appointment a join token is for: its scope reads "patient/Appointment.r?_id=<id>". */
export function roomFromToken(token: string): string | null {
  const claims = decodeClaims(token);
  const scope = typeof claims?.scope === "string" ? claims.scope : "";
  const match = /(?:^|\s)patient\/Appointment\.[a-z]+\?_id=([A-Za-z0-9\-.]{1,64})(?:\s|$)/.exec(scope);
  return match?.[1] ?? null;
}

/** The unverified JWT payload (for display and routing only; the server verifies the token). */
export function decodeClaims(token: string): Record<string, unknown> | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims === "object" && claims !== null && !Array.isArray(claims)
      ? (claims as Record<string, unknown>)
      : null;
  } catch {
    return null;
  }
}

export function isCode(code: string): boolean {
  return /^\d{8}$/.test(code);
}

/** Digits only: people read codes out with spaces or dashes. */
export function normaliseCode(input: string): string {
  return input.replace(/[\s-]/g, "");
}

export type Redeemed =
  | { ok: true; token: string; room: string | null }
  | { ok: false; reason: "refused" | "unavailable" };

/** Proposed endpoint (not on the server yet): POST /auth/join, form `link=…` or `grant=…&code=…`,
 * answering {"access_token", "token_type", "expires_in", "purpose": "Appointment/<id>"}. */
export const JOIN_ENDPOINT = "/auth/join";

export async function redeem(
  fetcher: typeof fetch,
  body: { link: string } | { grant: string; code: string },
): Promise<Redeemed> {
  let response: Response;
  try {
    response = await fetcher(JOIN_ENDPOINT, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
      body: new URLSearchParams(body).toString(),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    return { ok: false, reason: "unavailable" };
  }
  if (response.status === 400 || response.status === 401 || response.status === 403) {
    return { ok: false, reason: "refused" };
  }
  if (!response.ok) return { ok: false, reason: "unavailable" };
  const data: unknown = await response.json().catch(() => null);
  if (typeof data !== "object" || data === null) return { ok: false, reason: "unavailable" };
  const record = data as Record<string, unknown>;
  const token = record.access_token;
  if (typeof token !== "string" || token === "") return { ok: false, reason: "unavailable" };
  const purpose = typeof record.purpose === "string" ? record.purpose : "";
  const room = /^Appointment\/(.+)$/.exec(purpose)?.[1] ?? roomFromToken(token);
  return { ok: true, token, room };
}
