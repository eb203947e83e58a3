// A tiny DOM builder: text is always set as text (never innerHTML), so names from the wire are safe.
type Child = Node | string | null | undefined | false;
type Attrs = Record<string, string | number | boolean | null | undefined | EventListener>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = String(value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  el.append(...children.filter((c): c is Node | string => c !== null && c !== undefined && c !== false));
  return el;
}

export function clear(el: Element): void {
  el.replaceChildren();
}

let announcer: HTMLElement | null = null;

/** Screen-reader announcement through the page's polite live region. */
export function announce(text: string): void {
  announcer ??= document.getElementById("announcer");
  if (!announcer) return;
  announcer.textContent = "";
  // A fresh text node after a tick is announced even when the text repeats.
  window.setTimeout(() => {
    if (announcer) announcer.textContent = text;
  }, 50);
}

/** Move focus to a new step's heading so keyboard and screen-reader users start there. */
export function focusHeading(container: Element): void {
  const heading = container.querySelector<HTMLElement>("h1, h2");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: false });
  }
}
