// German first; English switchable (?lang=en or the language button, remembered per browser).
const de = {
  "app.title": "Medi-KUS Videosprechstunde",
  "lang.switch": "English",
  "loading": "Wird geladen …",
  "error.title": "Da ist etwas schiefgelaufen",
  "error.reload": "Seite neu laden",
  "error.unexpected": "Ein unerwarteter Fehler ist aufgetreten. Bitte laden Sie die Seite neu.",
  "retry": "Erneut versuchen",
  // joining
  "join.heading": "Videosprechstunde beitreten",
  "join.intro": "Bitte geben Sie die Zugangsdaten ein, die Sie von der Praxis erhalten haben.",
  "join.grant": "Termin-Kennung",
  "join.grant.hint": "Steht in der Nachricht der Praxis oder auf dem Bildschirm der Station.",
  "join.code": "Zugangscode (8 Ziffern)",
  "join.code.hint": "Die Praxis nennt Ihnen den Code am Telefon.",
  "join.submit": "Weiter",
  "join.redeeming": "Ihr Zugang wird geprüft …",
  "join.refused": "Der Link oder Code ist ungültig, abgelaufen oder wurde schon benutzt. Bitte fragen Sie in der Praxis nach einem neuen.",
  "join.unavailable": "Die Anmeldung mit Link oder Code ist gerade nicht möglich. Bitte versuchen Sie es später noch einmal.",
  "join.code.invalid": "Bitte geben Sie genau 8 Ziffern ein.",
  "join.grant.missing": "Bitte geben Sie die Termin-Kennung ein.",
  "join.noroom": "Zu diesem Zugang gehört kein Termin. Bitte fragen Sie in der Praxis nach.",
  // device check
  "check.heading": "Technik prüfen",
  "check.intro": "Bevor es losgeht, prüfen wir Kamera, Mikrofon, Lautsprecher und Verbindung.",
  "check.camera": "Kamera",
  "check.camera.preview": "Vorschau Ihrer Kamera",
  "check.microphone": "Mikrofon",
  "check.microphone.level": "Lautstärke Ihres Mikrofons",
  "check.microphone.hint": "Sprechen Sie etwas – der Balken sollte sich bewegen.",
  "check.speaker": "Lautsprecher",
  "check.speaker.play": "Testton abspielen",
  "check.speaker.hint": "Hören Sie einen Ton? Wenn nicht, stellen Sie den Ton lauter.",
  "check.connection": "Verbindung",
  "check.ok": "In Ordnung",
  "check.pending": "Wird geprüft …",
  "check.failed": "Nicht in Ordnung",
  "check.connection.ok": "Verbindung zum Server steht.",
  "check.connection.failed": "Keine Verbindung zum Server. Bitte prüfen Sie Ihr Internet (WLAN oder mobile Daten).",
  "check.name": "Ihr Name (wird der Ärztin/dem Arzt angezeigt)",
  "check.continue": "Weiter zum Warteraum",
  "check.continue.without": "Ohne Kamera und Mikrofon fortfahren",
  "media.denied": "Der Zugriff auf Kamera oder Mikrofon wurde nicht erlaubt. Bitte erlauben Sie den Zugriff in Ihrem Browser (meist über das Schloss-Symbol neben der Adresse) und laden Sie die Seite neu.",
  "media.notfound": "Es wurde keine Kamera oder kein Mikrofon gefunden. Bitte schließen Sie ein Gerät an.",
  "media.inuse": "Kamera oder Mikrofon werden gerade von einem anderen Programm benutzt. Bitte schließen Sie das andere Programm.",
  "media.insecure": "Kamera und Mikrofon sind nur über eine sichere Verbindung (https) verfügbar.",
  "media.other": "Kamera oder Mikrofon konnten nicht gestartet werden.",
  // waiting room
  "wait.heading": "Warteraum",
  "wait.text": "Bitte warten Sie, die Ärztin/der Arzt holt Sie gleich herein.",
  "wait.connecting": "Verbindung wird aufgebaut …",
  // call
  "call.heading": "Videosprechstunde",
  "call.you": "Sie",
  "call.mute": "Mikrofon aus",
  "call.unmute": "Mikrofon an",
  "call.camera.off": "Kamera aus",
  "call.camera.on": "Kamera an",
  "call.leave": "Verlassen",
  "call.end": "Beenden",
  "call.end.confirm": "Die Sprechstunde für alle beenden?",
  "call.ended": "Die Sprechstunde ist beendet. Vielen Dank!",
  "call.left": "Sie haben die Sprechstunde verlassen.",
  "call.alone": "Noch niemand sonst im Gespräch.",
  "call.connecting.peer": "Verbindung wird aufgebaut …",
  "call.peer.reconnecting": "Verbindung unterbrochen – wird wiederhergestellt …",
  "call.joined": "{name} ist dem Gespräch beigetreten.",
  "call.peer.left": "{name} hat das Gespräch verlassen.",
  "call.play": "Ton und Bild starten",
  "call.lost": "Die Verbindung zum Server ist abgebrochen.",
  // doctor
  "consult.heading": "Sprechstunde",
  "consult.login": "Bitte melden Sie sich zuerst an.",
  "consult.noroom": "Kein Termin angegeben (Adresse ohne ?room=…).",
  "consult.waiting": "Warteraum",
  "consult.waiting.empty": "Niemand wartet.",
  "consult.waiting.new": "{name} wartet im Warteraum.",
  "consult.admit": "Hereinholen",
  "consult.admit.label": "{name} hereinholen",
  "consult.participants": "Im Gespräch",
  "consult.quality": "Verbindungsqualität",
  "consult.quality.empty": "Noch keine Verbindung.",
  "consult.chat": "Chat",
  "consult.chat.message": "Nachricht",
  "consult.chat.send": "Senden",
  "consult.chat.empty": "Noch keine Nachrichten.",
  "consult.vitals": "Vitaldaten",
  "consult.vitals.empty": "Noch keine Messwerte von der Station.",
  // roles
  "role.host": "Ärztin/Arzt",
  "role.guest": "Gast",
  "role.station": "Station",
  // quality
  "q.rtt": "Laufzeit (RTT)",
  "q.loss": "Paketverlust",
  "q.fps": "Bilder/s",
  "q.bitrate.in": "Empfang",
  "q.bitrate.out": "Senden",
  "q.resolution": "Auflösung",
  "q.good": "gut",
  "q.fair": "mäßig",
  "q.poor": "schlecht",
  "q.unknown": "–",
  // signalling errors
  "err.bad-message": "Eine Nachricht wurde vom Server nicht verstanden.",
  "err.unauthorized": "Ihr Zugang ist ungültig oder abgelaufen. Bitte öffnen Sie den Link erneut oder fragen Sie in der Praxis nach einem neuen.",
  "err.forbidden": "Dafür fehlt Ihnen die Berechtigung.",
  "err.room-full": "Das Gespräch ist voll (höchstens 4 Personen).",
  "err.room-ended": "Diese Sprechstunde ist bereits beendet.",
  "err.rate-limited": "Zu viele Nachrichten in kurzer Zeit. Bitte versuchen Sie es gleich noch einmal.",
  "err.unknown-peer": "Diese Person ist nicht mehr im Gespräch.",
  "err.connection": "Die Verbindung zum Server ist abgebrochen. Bitte prüfen Sie Ihr Internet.",
};

export type MessageKey = keyof typeof de;

const en: Record<MessageKey, string> = {
  "app.title": "Medi-KUS video consultation",
  "lang.switch": "Deutsch",
  "loading": "Loading …",
  "error.title": "Something went wrong",
  "error.reload": "Reload page",
  "error.unexpected": "An unexpected error occurred. Please reload the page.",
  "retry": "Try again",
  "join.heading": "Join the video consultation",
  "join.intro": "Please enter the access details you received from the practice.",
  "join.grant": "Appointment key",
  "join.grant.hint": "It is in the practice's message or on the station's screen.",
  "join.code": "Access code (8 digits)",
  "join.code.hint": "The practice tells you the code on the phone.",
  "join.submit": "Continue",
  "join.redeeming": "Checking your access …",
  "join.refused": "The link or code is invalid, expired or already used. Please ask the practice for a new one.",
  "join.unavailable": "Joining with a link or code is not possible right now. Please try again later.",
  "join.code.invalid": "Please enter exactly 8 digits.",
  "join.grant.missing": "Please enter the appointment key.",
  "join.noroom": "This access belongs to no appointment. Please ask the practice.",
  "check.heading": "Check your devices",
  "check.intro": "Before we start, we check camera, microphone, speaker and connection.",
  "check.camera": "Camera",
  "check.camera.preview": "Preview of your camera",
  "check.microphone": "Microphone",
  "check.microphone.level": "Your microphone level",
  "check.microphone.hint": "Say something – the bar should move.",
  "check.speaker": "Speaker",
  "check.speaker.play": "Play test tone",
  "check.speaker.hint": "Do you hear a tone? If not, turn the volume up.",
  "check.connection": "Connection",
  "check.ok": "OK",
  "check.pending": "Checking …",
  "check.failed": "Not OK",
  "check.connection.ok": "Connected to the server.",
  "check.connection.failed": "No connection to the server. Please check your internet (Wi-Fi or mobile data).",
  "check.name": "Your name (shown to the doctor)",
  "check.continue": "Continue to the waiting room",
  "check.continue.without": "Continue without camera and microphone",
  "media.denied": "Access to camera or microphone was not allowed. Please allow it in your browser (usually via the lock icon next to the address) and reload the page.",
  "media.notfound": "No camera or microphone was found. Please connect a device.",
  "media.inuse": "Camera or microphone are in use by another program. Please close that program.",
  "media.insecure": "Camera and microphone are only available over a secure connection (https).",
  "media.other": "Camera or microphone could not be started.",
  "wait.heading": "Waiting room",
  "wait.text": "Please wait, the doctor will let you in shortly.",
  "wait.connecting": "Connecting …",
  "call.heading": "Video consultation",
  "call.you": "You",
  "call.mute": "Microphone off",
  "call.unmute": "Microphone on",
  "call.camera.off": "Camera off",
  "call.camera.on": "Camera on",
  "call.leave": "Leave",
  "call.end": "End",
  "call.end.confirm": "End the consultation for everyone?",
  "call.ended": "The consultation has ended. Thank you!",
  "call.left": "You have left the consultation.",
  "call.alone": "Nobody else in the call yet.",
  "call.connecting.peer": "Connecting …",
  "call.peer.reconnecting": "Connection interrupted – reconnecting …",
  "call.joined": "{name} joined the call.",
  "call.peer.left": "{name} left the call.",
  "call.play": "Start sound and video",
  "call.lost": "The connection to the server was lost.",
  "consult.heading": "Consultation",
  "consult.login": "Please log in first.",
  "consult.noroom": "No appointment given (address without ?room=…).",
  "consult.waiting": "Waiting room",
  "consult.waiting.empty": "Nobody is waiting.",
  "consult.waiting.new": "{name} is waiting.",
  "consult.admit": "Let in",
  "consult.admit.label": "Let {name} in",
  "consult.participants": "In the call",
  "consult.quality": "Call quality",
  "consult.quality.empty": "No connection yet.",
  "consult.chat": "Chat",
  "consult.chat.message": "Message",
  "consult.chat.send": "Send",
  "consult.chat.empty": "No messages yet.",
  "consult.vitals": "Vital signs",
  "consult.vitals.empty": "No readings from the station yet.",
  "role.host": "Doctor",
  "role.guest": "Guest",
  "role.station": "Station",
  "q.rtt": "Round trip (RTT)",
  "q.loss": "Packet loss",
  "q.fps": "Frames/s",
  "q.bitrate.in": "Receiving",
  "q.bitrate.out": "Sending",
  "q.resolution": "Resolution",
  "q.good": "good",
  "q.fair": "fair",
  "q.poor": "poor",
  "q.unknown": "–",
  "err.bad-message": "The server did not understand a message.",
  "err.unauthorized": "Your access is invalid or expired. Please open the link again or ask the practice for a new one.",
  "err.forbidden": "You are not allowed to do that.",
  "err.room-full": "The call is full (at most 4 people).",
  "err.room-ended": "This consultation has already ended.",
  "err.rate-limited": "Too many messages in a short time. Please try again in a moment.",
  "err.unknown-peer": "This person is no longer in the call.",
  "err.connection": "The connection to the server was lost. Please check your internet.",
};

export type Lang = "de" | "en";
const catalogues: Record<Lang, Record<MessageKey, string>> = { de, en };
const STORAGE_KEY = "medikus.lang";

let current: Lang = "de";

/** The language from ?lang=, else the remembered choice, else German. */
export function initLang(search: string, stored: string | null): Lang {
  const wanted = new URLSearchParams(search).get("lang") ?? stored;
  current = wanted === "en" ? "en" : "de";
  return current;
}

export function lang(): Lang {
  return current;
}

export function locale(): string {
  return current === "en" ? "en-GB" : "de-DE";
}

export function t(key: MessageKey, vars: Record<string, string> = {}): string {
  const text = catalogues[current][key];
  return text.replace(/\{(\w+)\}/g, (_, name: string) => vars[name] ?? `{${name}}`);
}

export function hasKey(key: string): key is MessageKey {
  return key in de;
}

/** Remember the other language and reload (pages render once, in one language). */
export function switchLang(storage: Storage, reload: () => void): void {
  storage.setItem(STORAGE_KEY, current === "de" ? "en" : "de");
  reload();
}

export function storedLang(storage: Storage): string | null {
  try {
    return storage.getItem(STORAGE_KEY);
  } catch {
    return null; // storage disabled (privacy mode): German
  }
}
