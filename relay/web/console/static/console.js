// relay's console: the one script it uses, written for it (same terms as the package).
// What it adds is live: a broadcast's counts and progress bar follow its Server-Sent
// Events; every page reads the same without it.
"use strict";

const COUNTS = ["delivered", "bounced", "deferred", "queued", "cancelled", "suppressed",
  "rejected", "total"];

function follow(row) {
  const id = row.dataset.broadcast;
  const source = new EventSource(`/ui/broadcasts/${encodeURIComponent(id)}/events`);
  source.addEventListener("status", (message) => {
    const status = JSON.parse(message.data);
    for (const name of COUNTS) {
      const cell = row.querySelector(`[data-count="${name}"]`);
      if (cell) cell.textContent = String(status[name]);
    }
    // Sent: delivered or bounced. What was cancelled was never sent: no progress.
    const sent = status.delivered + status.bounced;
    row.querySelector('[data-count="sent"]').textContent = String(sent);
    row.querySelector('[data-count="state"]').textContent = status.state;
    const bar = row.querySelector("progress");
    bar.max = Math.max(status.total, 1);
    bar.value = sent;
    row.dataset.state = status.state;
  });
  // The stream ends once nothing is left to send; the browser would reconnect, so stop.
  source.addEventListener("error", () => source.close());
}

document.querySelectorAll("tr[data-broadcast]").forEach((row) => {
  if (row.dataset.state !== "done" && row.dataset.state !== "cancelled") follow(row);
});
