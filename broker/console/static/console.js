// The broker console's only script: no framework, no outside requests. The pages work
// without it; it refreshes the live parts and checks JSON as it is typed.
"use strict";

// Elements with data-poll="URL" are refreshed every few seconds from URL (the server
// renders the fragment); data-swap="outer" replaces the element itself. A refresh
// waits while the operator has focus inside the element, so nothing moves under them.
function poll(el) {
  const every = Number(el.dataset.interval || 3000);
  const timer = setInterval(async () => {
    if (!document.body.contains(el)) { clearInterval(timer); return; }
    if (el.contains(document.activeElement) && document.activeElement !== document.body) return;
    try {
      const response = await fetch(el.dataset.poll, { credentials: "same-origin" });
      if (!response.ok && response.status !== 400) return;
      const html = await response.text();
      if (el.dataset.swap === "outer") {
        const holder = document.createElement("div");
        holder.innerHTML = html;
        const fresh = holder.firstElementChild;
        if (!fresh) return;
        el.replaceWith(fresh);
        clearInterval(timer);
        if (fresh.dataset.poll) poll(fresh);
      } else {
        el.innerHTML = html;
      }
    } catch (e) { /* the broker may be restarting: try again next time */ }
  }, every);
}

// A textarea with data-json says at once whether it holds JSON, and its form is not
// sent while it does not (the server checks again and changes nothing either way).
function checkJson(area) {
  const message = area.parentElement.nextElementSibling;
  let problem = "";
  try { JSON.parse(area.value); } catch (e) { problem = "Not valid JSON: " + e.message; }
  area.setCustomValidity(problem);
  area.setAttribute("aria-invalid", problem ? "true" : "false");
  if (message && message.classList.contains("json-error")) message.textContent = problem;
  return !problem;
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(poll);
  document.addEventListener("input", (event) => {
    if (event.target.matches("textarea[data-json]")) checkJson(event.target);
  });
  document.addEventListener("submit", (event) => {
    const submitter = event.submitter;
    if (submitter && submitter.hasAttribute("formnovalidate")) return;
    for (const area of event.target.querySelectorAll("textarea[data-json]")) {
      if (!checkJson(area)) { event.preventDefault(); area.focus(); return; }
    }
  });
});
