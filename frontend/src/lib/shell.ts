// Page frame shared by all apps: language, header, a friendly error instead of a blank page.
import { h, clear } from "./dom";
import { initLang, storedLang, switchLang, t } from "./i18n";

export function main(): HTMLElement {
  const el = document.getElementById("main");
  if (!el) throw new Error("page has no #main");
  return el;
}

/** Language, document title/lang and the header's language button; call first. */
export function startPage(title: () => string): void {
  const storage = safeStorage();
  const language = initLang(location.search, storage ? storedLang(storage) : null);
  document.documentElement.lang = language;
  document.title = `${title()} – Medi-KUS`;
  const button = document.getElementById("lang-switch");
  if (button) {
    button.textContent = t("lang.switch");
    button.setAttribute("lang", language === "de" ? "en" : "de");
    button.hidden = storage === null;
    button.addEventListener("click", () => {
      if (!storage) return;
      switchLang(storage, () => {
        const url = new URL(location.href);
        url.searchParams.delete("lang");
        location.replace(url.toString());
      });
    });
  }
  window.addEventListener("error", (e) => showFatal(e.error ?? e.message));
  window.addEventListener("unhandledrejection", (e) => showFatal(e.reason));
}

function safeStorage(): Storage | null {
  try {
    localStorage.getItem("x");
    return localStorage;
  } catch {
    return null;
  }
}

/** A message with a way forward; replaces the page content. */
export function showMessage(
  text: string,
  options: { title?: string; action?: { label: string; run: () => void }; tone?: "error" | "info" } = {},
): void {
  const container = main();
  clear(container);
  const box = h(
    "section",
    { class: `message ${options.tone ?? "error"}`, "aria-labelledby": "message-title" },
    h("h1", { id: "message-title" }, options.title ?? t("error.title")),
    h("p", {}, text),
  );
  if (options.action) {
    const { label, run } = options.action;
    box.append(h("button", { type: "button", class: "primary", onclick: () => run() }, label));
  }
  container.append(box);
  const heading = box.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

function showFatal(reason: unknown): void {
  console.error(reason);
  // A running call is worth more than a clean error page: keep it, the error is in the console.
  if (document.querySelector("#main .call")) return;
  showMessage(t("error.unexpected"), {
    action: { label: t("error.reload"), run: () => location.reload() },
  });
}
