// The console's only script: live updates, copy buttons. The pages work without it.
"use strict";
(() => {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      try {
        await navigator.clipboard.writeText(source.textContent);
        button.textContent = "Copied";
      } catch {
        getSelection().selectAllChildren(source);  // no clipboard: selected, for Ctrl-C
      }
    });
  }

  // Server-sent events say that something changed; the page is fetched again and each
  // [data-live] region that changed is swapped, unless the keyboard focus is in it.
  if (!window.EventSource || !document.querySelector("[data-live]")) return;
  let waiting = false;
  const refresh = async () => {
    waiting = false;
    const answer = await fetch(location.href, { credentials: "same-origin" });
    if (!answer.ok) return;
    const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
    for (const region of document.querySelectorAll("[data-live]")) {
      const next = fresh.getElementById(region.id);
      if (next && next.innerHTML !== region.innerHTML && !region.contains(document.activeElement)) {
        region.replaceWith(document.importNode(next, true));
      }
    }
    document.body.dataset.updated = String(Date.now());
  };
  const events = new EventSource("/events");
  events.addEventListener("change", () => {
    if (!waiting) {
      waiting = true;
      setTimeout(refresh, 100);
    }
  });
  events.addEventListener("open", () => { document.body.dataset.live = "on"; });
})();
