import { describe, expect, it } from "vitest";
import { describeReading } from "../src/lib/vitals";

describe("describeReading", () => {
  it("shows a FHIR blood-pressure Observation with its components", () => {
    const observation = {
      resourceType: "Observation",
      code: { coding: [{ system: "http://loinc.org", code: "85354-9", display: "Blutdruck" }] },
      effectiveDateTime: "2025-01-02T10:00:00Z",
      component: [
        { valueQuantity: { value: 128, unit: "mmHg" } },
        { valueQuantity: { value: 84, unit: "mmHg" } },
      ],
    };
    expect(describeReading(JSON.stringify(observation), "de-DE")).toEqual([
      { label: "Blutdruck", value: "128 mmHg / 84 mmHg", time: "2025-01-02T10:00:00Z" },
    ]);
  });

  it("shows a flat reading with a German decimal comma", () => {
    expect(describeReading('{"type":"Temperatur","value":37.25,"unit":"°C"}', "de-DE")).toEqual([
      { label: "Temperatur", value: "37,25 °C", time: null },
    ]);
  });

  it("never throws on odd input", () => {
    expect(describeReading("not json", "de-DE")[0]?.value).toBe("not json");
    expect(describeReading('{"foo":1}', "de-DE")[0]).toMatchObject({ label: "?", value: '{"foo":1}' });
  });
});
