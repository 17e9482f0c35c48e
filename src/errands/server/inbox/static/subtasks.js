// The live tree of sub-errands on a parent's page (templates/_subtasks.html): polls its
// fragment and swaps it in, keeping each approval card the person may be editing.
(() => {
  "use strict";
  const FAST_MS = 1500; // while some sub-errand is open
  const SLOW_MS = 10000; // when all have ended (a new delegate call may add more)

  async function refresh(section) {
    const response = await fetch(section.dataset.src, { credentials: "same-origin" });
    if (!response.ok) return SLOW_MS;
    const fresh = document.createElement("div");
    fresh.innerHTML = await response.text();
    for (const card of fresh.querySelectorAll("article.approval")) {
      const id = CSS.escape(card.dataset.approvalId || "");
      const old = section.querySelector(`article.approval[data-approval-id="${id}"]`);
      if (old) card.replaceWith(old); // (its editor, its reason typed so far)
    }
    section.replaceChildren(...fresh.childNodes);
    const table = section.querySelector(".sub-table");
    section.hidden = !table || !table.querySelector("tr.sub-row");
    return table && table.dataset.open !== "0" ? FAST_MS : SLOW_MS;
  }

  function start() {
    const section = document.getElementById("subtasks");
    if (!section) return;
    const tick = async () => {
      let next = SLOW_MS;
      try {
        if (!document.hidden) next = await refresh(section);
      } catch (error) {
        next = SLOW_MS; // (the server restarting: try again later)
      }
      setTimeout(tick, next);
    };
    const table = section.querySelector(".sub-table");
    setTimeout(tick, table && table.dataset.open !== "0" ? FAST_MS : SLOW_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
