// The dashboard's only script; every page works without it.
// - Shows times in the reader's own time zone (the UTC time stays in the tooltip).
// - Disables a form's button once it is sent, so a run is not started twice by a double click.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("time[datetime]")) {
    const when = new Date(el.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      el.title = el.textContent;
      el.textContent = when.toLocaleString();
    }
  }
  for (const form of document.querySelectorAll("form")) {
    form.addEventListener("submit", () => {
      for (const button of form.querySelectorAll("button[type=submit]")) {
        // After the submission has started: disabling first would drop the button's value.
        setTimeout(() => { button.disabled = true; }, 0);
      }
    });
  }
});
