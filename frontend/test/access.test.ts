import { describe, expect, it } from "vitest";
import { isCode, normaliseCode, parseFragment, redeem, roomFromToken } from "../src/lib/access";

function jwt(claims: object): string {
  // base64url of UTF-8, as the server's JWTs are
  const b64 = (text: string) =>
    btoa(String.fromCharCode(...new TextEncoder().encode(text))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return `${b64('{"alg":"ES256"}')}.${b64(JSON.stringify(claims))}.sig`;
}

describe("join access", () => {
  it("reads token, room and name from the fragment", () => {
    expect(parseFragment("#token=abc&room=42&name=Erika%20M")).toMatchObject({
      token: "abc",
      room: "42",
      name: "Erika M",
      link: null,
    });
    expect(parseFragment("")).toMatchObject({ token: null, link: null, grant: null });
  });

  it("finds the appointment in a join token's scope", () => {
    expect(roomFromToken(jwt({ scope: "patient/Appointment.r?_id=appt-7" }))).toBe("appt-7");
    expect(roomFromToken(jwt({ scope: "patient/Observation.r" }))).toBeNull();
    expect(roomFromToken("not-a-jwt")).toBeNull();
  });

  it("accepts codes read out with spaces", () => {
    expect(isCode(normaliseCode("1234 5678"))).toBe(true);
    expect(isCode(normaliseCode("1234-567"))).toBe(false);
  });

  it("redeems a link into a token and a room; refusals and outages are told apart", async () => {
    const answer = (status: number, body: unknown) =>
      (async () => new Response(JSON.stringify(body), { status })) as unknown as typeof fetch;
    await expect(
      redeem(answer(200, { access_token: "tok", purpose: "Appointment/9" }), { link: "l" }),
    ).resolves.toEqual({ ok: true, token: "tok", room: "9" });
    await expect(redeem(answer(400, { error: "invalid_grant" }), { link: "l" })).resolves.toEqual({
      ok: false,
      reason: "refused",
    });
    await expect(redeem(answer(404, {}), { grant: "g", code: "12345678" })).resolves.toMatchObject({
      reason: "unavailable",
    });
    const offline = (async () => {
      throw new TypeError("Failed to fetch");
    }) as unknown as typeof fetch;
    await expect(redeem(offline, { link: "l" })).resolves.toMatchObject({ reason: "unavailable" });
  });
});
