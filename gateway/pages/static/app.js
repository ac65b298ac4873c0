// Small conveniences; every page works without them.
"use strict";
document.documentElement.classList.add("js");

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const field = document.getElementById(button.dataset.copy);
  if (!field) return;
  const done = () => {
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(done, () => { field.select(); });
  } else {
    // Plain http (not localhost): select it and use the older copy command.
    field.select();
    try { if (document.execCommand("copy")) done(); } catch (e) { /* the text stays selected */ }
  }
});

// Monitor: optional auto-refresh, remembered in this browser, paused while a form has focus.
const refresh = document.getElementById("autorefresh");
if (refresh) {
  const key = "wahook.autorefresh";
  refresh.checked = localStorage.getItem(key) === "1";
  let timer = null;
  const schedule = () => {
    clearTimeout(timer);
    if (!refresh.checked) return;
    timer = setTimeout(() => {
      const busy = document.activeElement && document.activeElement.closest("form");
      if (busy) schedule(); else location.reload();
    }, Number(refresh.dataset.seconds || 15) * 1000);
  };
  refresh.addEventListener("change", () => {
    localStorage.setItem(key, refresh.checked ? "1" : "0");
    schedule();
  });
  schedule();
}
