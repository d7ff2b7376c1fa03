// The bin's console: live status by polling with fetch, one-click labels on the review page.
// Plain JavaScript, no build step, nothing from the internet.
(function () {
  "use strict";
  const body = document.body;
  const csrf = body.dataset.csrf || "";
  const offline = document.getElementById("offline");

  function bars(root) {
    root.querySelectorAll("[data-pct]").forEach(function (el) {
      const pct = Math.max(0, Math.min(100, parseFloat(el.dataset.pct) || 0));
      el.style.width = pct + "%";
    });
  }
  bars(document);

  function toLogin() {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }

  // -- live parts: <div data-live="/partials/..."> is replaced every refresh period ---------
  const live = document.querySelector("[data-live]");
  if (live) {
    const every = parseInt(body.dataset.refreshMs || "2000", 10);
    let busy = false;
    async function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const response = await fetch(live.dataset.live, { credentials: "same-origin", cache: "no-store" });
        if (response.status === 401) return toLogin();
        if (response.status === 429) return;  // the bin is busy: skip this round
        if (!response.ok) throw new Error("HTTP " + response.status);
        live.innerHTML = await response.text();
        bars(live);
        if (offline) offline.hidden = true;
      } catch (error) {
        if (offline) offline.hidden = false;
      } finally {
        busy = false;
      }
    }
    setInterval(refresh, every);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
  }

  // -- review: a click on a label button, or a typed label --------------------------------
  async function label(card, value) {
    const status = card.querySelector(".status");
    card.classList.add("saving");
    try {
      const response = await fetch("/api/review/" + encodeURIComponent(card.dataset.item), {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ label: value }),
      });
      if (response.status === 401) return toLogin();
      const data = await response.json().catch(function () { return {}; });
      if (!response.ok) {
        const detail = Array.isArray(data.detail) ? data.detail.map(function (d) { return d.msg; }).join("; ") : data.detail;
        throw new Error(detail || "HTTP " + response.status);
      }
      if (!card.classList.contains("done")) {
        document.querySelectorAll(".tabs a.on .chip, #to-review").forEach(function (count) {
          if (!/^\d+$/.test(count.textContent)) return;
          const left = Math.max(0, parseInt(count.textContent, 10) - 1);
          count.textContent = left;
          if (left === 0 && count.id === "to-review") count.hidden = true;
        });
      }
      card.classList.add("done");
      status.className = "status ok";
      status.textContent = "Labelled: " + data.label + (data.note ? " (" + data.note + ")" : "");
      card.querySelectorAll("button[data-label]").forEach(function (b) {
        b.classList.toggle("chosen", b.dataset.label === data.label);
      });
      const input = card.querySelector("form.new-label input");
      if (input) input.value = "";
    } catch (error) {
      status.className = "status bad";
      status.textContent = "Not saved: " + error.message;
    } finally {
      card.classList.remove("saving");
    }
  }

  // -- taught: remove a site example ------------------------------------------------------
  async function untaught(card, button) {
    const status = card.querySelector(".status");
    if (!window.confirm("Remove this example? The bin stops learning from it.")) return;
    card.classList.add("saving");
    button.disabled = true;
    try {
      const response = await fetch("/api/taught/" + encodeURIComponent(button.dataset.remove) + "/remove", {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf },
      });
      if (response.status === 401) return toLogin();
      const data = await response.json().catch(function () { return {}; });
      if (!response.ok) throw new Error(data.detail || "HTTP " + response.status);
      card.classList.add("removed");
      status.className = "status ok";
      status.textContent = "Removed: " + data.remaining + " " + data.label + " left";
      button.hidden = true;
      const row = document.querySelector('[data-label-row="' + CSS.escape(data.label) + '"] [data-count]');
      if (row) {
        row.textContent = data.remaining;
        // the label's last example: the store no longer has the label (a reload drops the row)
        row.closest("tr").classList.toggle("removed", data.remaining === 0);
      }
      const total = document.getElementById("taught-total");
      if (total) {
        const left = Math.max(0, parseInt(total.dataset.total, 10) - 1);
        total.dataset.total = left;
        total.textContent = left + (left === 1 ? " example" : " examples");
      }
    } catch (error) {
      status.className = "status bad";
      status.textContent = "Not removed: " + error.message;
      button.disabled = false;
    } finally {
      card.classList.remove("saving");
    }
  }

  document.addEventListener("click", function (event) {
    const remove = event.target.closest("button[data-remove]");
    if (remove) return untaught(remove.closest("[data-example]"), remove);
    const button = event.target.closest("button[data-label]");
    const card = button && button.closest("[data-item]");
    if (card) label(card, button.dataset.label);
  });
  document.addEventListener("submit", function (event) {
    const form = event.target.closest("form.new-label");
    if (!form) return;
    event.preventDefault();
    const value = form.elements.label.value.trim();
    if (value) label(form.closest("[data-item]"), value);
  });
})();
