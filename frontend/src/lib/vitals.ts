// Station readings arriving as JSON on the "vitals" data channel, made readable.
// Accepts a FHIR Observation or a flat {name|type|code, value, unit, time} object.

export interface VitalLine {
  label: string;
  value: string;
  time: string | null;
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function str(v: unknown): string | null {
  return typeof v === "string" && v !== "" ? v : null;
}

function codeLabel(code: unknown): string | null {
  if (typeof code === "string") return code;
  if (!isObject(code)) return null;
  const coding = Array.isArray(code.coding) ? code.coding.filter(isObject) : [];
  return str(code.text) ?? coding.map((c) => str(c.display) ?? str(c.code)).find((x) => x) ?? null;
}

function quantity(v: unknown, format: (n: number) => string): string | null {
  if (typeof v === "number") return format(v);
  if (!isObject(v) || typeof v.value !== "number") return null;
  const unit = str(v.unit) ?? str(v.code) ?? "";
  return `${format(v.value)}${unit ? ` ${unit}` : ""}`.trim();
}

/** Lines for one reading; never throws (unknown shapes are shown as compact JSON). */
export function describeReading(data: string, locale: string): VitalLine[] {
  const number = new Intl.NumberFormat(locale, { maximumFractionDigits: 2 });
  const format = (n: number) => number.format(n);
  let reading: unknown;
  try {
    reading = JSON.parse(data);
  } catch {
    return [{ label: "?", value: data.slice(0, 200), time: null }];
  }
  if (Array.isArray(reading)) return reading.flatMap((r) => describeReading(JSON.stringify(r), locale));
  if (!isObject(reading)) return [{ label: "?", value: String(reading), time: null }];
  const time =
    str(reading.effectiveDateTime) ?? str(reading.time) ?? str(reading.at) ?? str(reading.timestamp);
  const label =
    codeLabel(reading.code) ?? str(reading.display) ?? str(reading.name) ?? str(reading.type) ?? "?";
  const components = Array.isArray(reading.component) ? reading.component.filter(isObject) : [];
  if (components.length > 0) {
    const value = components
      .map((c) => quantity(c.valueQuantity, format))
      .filter((v): v is string => v !== null)
      .join(" / ");
    return [{ label, value, time }];
  }
  const direct = quantity(reading.valueQuantity, format);
  if (direct !== null) return [{ label, value: direct, time }];
  if (typeof reading.value === "number") {
    const unit = str(reading.unit);
    return [{ label, value: unit ? `${format(reading.value)} ${unit}` : format(reading.value), time }];
  }
  if (isObject(reading.value)) {
    const value = quantity(reading.value, format);
    if (value !== null) return [{ label, value, time }];
  }
  return [{ label, value: JSON.stringify(reading).slice(0, 200), time }];
}
