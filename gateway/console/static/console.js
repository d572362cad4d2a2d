// Gridline console: keyboard shortcuts on the triage desk and live broadcast progress.
// Everything works without this file; it only saves clicks and reloads.
"use strict";

function triageShortcuts(list) {
  const cards = Array.from(list.querySelectorAll(".triage-card"));
  if (!cards.length) return;
  let at = 0;
  const focus = (index) => {
    at = Math.max(0, Math.min(cards.length - 1, index));
    cards.forEach((card, i) => card.classList.toggle("current", i === at));
    cards[at].focus({ preventScroll: false });
  };
  focus(0);
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName);
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const card = cards[at];
    if (event.key === "j") focus(at + 1);
    else if (event.key === "k") focus(at - 1);
    else if (["1", "2", "3"].includes(event.key)) {
      const button = card.querySelector(`button[data-shortcut="${event.key}"]`);
      if (button) button.click();
    } else if (["g", "w", "r", "m", "c"].includes(event.key)) {
      const field = card.querySelector(`[data-key="${event.key}"]`);
      if (field) field.focus();
    } else return;
    event.preventDefault();
  });
}

function liveProgress(section) {
  const url = section.dataset.status;
  const fields = ["state", "audience_size", "sent", "delivered", "failed", "remaining",
                  "starts_at_local", "deferred_until_local"];
  const bar = document.getElementById("bar");
  const poll = async () => {
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const status = await response.json();
      for (const name of fields) {
        const cell = document.getElementById(`b-${name}`);
        if (cell) cell.textContent = status[name] ?? "—";
      }
      if (bar) { bar.max = status.audience_size || 1; bar.value = (status.audience_size || 0) - status.remaining; }
      if (["done", "cancelled"].includes(status.state)) return;
    } catch (error) { /* offline for a moment: try again */ }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const list = document.getElementById("triage");
  if (list) triageShortcuts(list);
  const progress = document.getElementById("progress");
  if (progress) liveProgress(progress);
});
