// errands inbox: a running tool's output, live, on an errand's page.
// inbox.js forwards the errand stream's `output` events as "errands:output" DOM events:
// {seq, stream: "stdout" | "stderr" | "exit" | "dropped", text}. The text arrives
// redacted by the tool; it is shown as text (never as HTML). The box goes away when the
// call's result reaches the timeline (the result is the record).
(function () {
  "use strict";

  const MAX_CHARS = 200000; // what the page keeps of one call's output

  const box = document.getElementById("live-output");
  const timeline = document.getElementById("timeline");
  if (!box || !timeline) return;
  const out = box.querySelector(".out");
  const status = box.querySelector(".status");
  let current = null; // the intent seq of the call shown

  function ended(seq) {
    return timeline.querySelector(`li.ev-result[data-intent="${seq}"]`) !== null;
  }

  function reset(seq) {
    current = seq;
    out.replaceChildren();
    status.textContent = "running…";
    box.dataset.seq = String(seq);
    box.classList.remove("ended");
    box.hidden = false;
  }

  function append(stream, text) {
    const last = out.lastElementChild;
    if (last && last.dataset.stream === stream) {
      last.textContent += text;
    } else {
      const span = document.createElement("span");
      span.className = `s-${stream}`;
      span.dataset.stream = stream;
      span.textContent = text;
      out.append(span);
    }
    let size = out.textContent.length;
    while (size > MAX_CHARS && out.firstElementChild) {
      size -= out.firstElementChild.textContent.length;
      out.firstElementChild.remove();
    }
    const atEnd = out.scrollHeight - out.scrollTop - out.clientHeight < 40;
    if (atEnd) out.scrollTop = out.scrollHeight; // follow, unless the person scrolled up
  }

  let replaying = false; // a (re)connected stream gives the running call's latest output first

  document.addEventListener("errands:output", (event) => {
    const { seq, stream, text, replay } = event.detail;
    if (ended(seq)) return; // its result is on the page already (a late replay)
    if (seq !== current || (replay && !replaying)) reset(seq); // a replay starts afresh
    replaying = Boolean(replay);
    if (stream === "exit") {
      status.textContent = text;
      box.classList.add("ended");
    } else {
      append(stream, text);
    }
  });

  // the call's result reached the timeline: it holds the output now
  new MutationObserver(() => {
    if (current !== null && ended(current)) {
      box.hidden = true;
      out.replaceChildren();
      current = null;
    }
  }).observe(timeline, { childList: true });
})();
