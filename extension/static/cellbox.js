// The /cellbox page: lists containers (with usage), snapshots and images through the
// REST API, with the login cookie and the XSRF token jupyter_server asks for on changes.
"use strict";
(function () {
  const base = document.querySelector('meta[name="cellbox-base-url"]').content;
  const xsrf = document.querySelector('meta[name="cellbox-xsrf"]').content;
  const api = base + "cellbox/api/";
  let snapOf = null;

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function size(n) {
    if (n === null || n === undefined) return "--";
    const u = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(1) : n) + u[i];
  }
  function showError(msg) {
    const e = document.getElementById("error");
    e.textContent = msg;
    e.hidden = !msg;
  }
  // What a snapshot or a restore did with the kernel's variables (the REST reply says).
  function showNotice(msg) {
    const e = document.getElementById("notice");
    e.textContent = msg;
    e.hidden = !msg;
  }
  function variablesNotice(what, s) {
    const v = s.variables || {};
    if (v.captured) return what + " " + s.id.slice(0, 12) + ": files and " + (v.summary || "variables");
    if (v.restored === true) return what + " " + s.id.slice(0, 12) + ": " + (v.summary || "variables restored") + "; files unchanged since";
    if (v.restored === "at restart") return what + " " + s.id.slice(0, 12) + ": files and variables, the kernel restarts (" + (v.reason || "") + ")";
    return what + " " + s.id.slice(0, 12) + ": files only (" + (v.reason || "no kernel") + ")";
  }
  async function call(method, path, body) {
    const opts = { method, headers: { "X-XSRFToken": xsrf }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.body = JSON.stringify(body);
      opts.headers["Content-Type"] = "application/json";
    }
    const r = await fetch(api + path, opts);
    if (r.status === 204) return null;
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text.split("\n").filter(Boolean).pop()) : null; } catch (e) { data = null; }
    if (!r.ok) throw new Error((data && data.message) || r.status + " " + r.statusText);
    if (data && data.error) throw new Error(data.message);
    return data;
  }
  function button(label, action, handler) {
    const b = el("button", label);
    b.dataset.action = action;
    b.addEventListener("click", async () => {
      b.disabled = true;
      try { showError(""); await handler(); await refresh(); }
      catch (e) { showError(label + ": " + e.message); }
      finally { b.disabled = false; }
    });
    return b;
  }

  async function loadStatus() {
    const s = await call("GET", "status");
    const banner = document.getElementById("banner");
    if (s.degraded) {
      banner.textContent = "Degraded mode: kernels run WITHOUT isolation. " + s.reason;
      banner.hidden = false;
    }
    // Limits the server asks for but cannot give (rootless: no delegated cgroup, no disk).
    const gaps = s.unenforced || {};
    const unenforced = document.getElementById("unenforced");
    unenforced.hidden = Object.keys(gaps).length === 0;
    unenforced.textContent = "Limits NOT enforced: " + Object.keys(gaps).join(", ") + ". " +
      [...new Set(Object.values(gaps))].join("; ");
    document.getElementById("summary").textContent =
      "default image " + s.default_image + " · limits " + s.limits.memory + ", " + s.limits.cpus + " CPU, " + s.limits.pids + " pids";
    return s;
  }

  async function loadContainers(status) {
    const rows = await call("GET", "containers?stats=1");
    const tbody = document.querySelector("#containers tbody");
    tbody.replaceChildren();
    document.getElementById("no-containers").hidden = rows.length > 0;
    for (const c of rows) {
      const tr = el("tr");
      tr.dataset.id = c.id;
      const st = c.stats || {};
      const mem = st.memory && st.memory.usage !== undefined ? size(st.memory.usage) + " / " + size(st.memory.limit) : "--";
      const cpu = st.cpu && st.cpu.usage_ns !== undefined ? (st.cpu.usage_ns / 1e9).toFixed(2) + " s" : "--";
      const pids = st.pids && st.pids.current !== undefined ? st.pids.current + " / " + (st.pids.limit || "max") : "--";
      for (const v of [c.notebook, c.name, c.status, c.image, mem, cpu, pids]) tr.append(el("td", v));
      tr.children[2].className = "status-" + c.status;
      const actions = el("td");
      if (c.status === "running") {
        actions.append(button("Stop", "stop", () => call("POST", "containers/" + c.id + "/stop", {})));
      }
      actions.append(button("Snapshot", "snapshot", async () => {
        const msg = window.prompt("Snapshot message", "") || "";
        const s = await call("POST", "containers/" + c.id + "/snapshots", { message: msg });
        showNotice(variablesNotice("snapshot", s));
      }));
      actions.append(button("Snapshots", "snapshots", async () => { snapOf = c; }));
      if (status.allow_commit) {
        actions.append(button("Commit", "commit", () => {
          const tag = window.prompt("Commit as repository:tag", "notebooks/" + c.name + ":latest");
          if (!tag) return null;
          return call("POST", "containers/" + c.id + "/commit", { repo_tag: tag, message: "committed from /cellbox" });
        }));
      }
      tr.append(actions);
      tbody.append(tr);
    }
    if (snapOf && !rows.some((c) => c.id === snapOf.id)) snapOf = null;
  }

  async function loadSnapshots() {
    const tbody = document.querySelector("#snapshots tbody");
    tbody.replaceChildren();
    document.getElementById("snap-of").textContent = snapOf ? "of " + snapOf.notebook : "";
    document.getElementById("no-snapshots").hidden = !!snapOf;
    if (!snapOf) return;
    const snaps = await call("GET", "containers/" + snapOf.id + "/snapshots");
    for (const s of snaps) {
      const tr = el("tr");
      for (const v of [s.id.slice(0, 12), s.created, s.message, size(s.size)]) tr.append(el("td", v));
      const td = el("td");
      td.append(button("Restore", "restore", async () => {
        const r = await call("POST", "containers/" + snapOf.id + "/snapshots/" + s.id + "/restore", {});
        showNotice(variablesNotice("restored", r));
      }));
      tr.append(td);
      tbody.append(tr);
    }
  }

  async function loadImages() {
    const imgs = await call("GET", "images");
    const tbody = document.querySelector("#images tbody");
    tbody.replaceChildren();
    for (const i of imgs) {
      const tr = el("tr");
      for (const v of [(i.refs || []).join(", ") || "<none>", i.short_id, i.created, size(i.size)]) tr.append(el("td", v));
      tbody.append(tr);
    }
  }

  async function refresh() {
    try {
      const status = await loadStatus();
      await loadContainers(status);
      await loadSnapshots();
      await loadImages();
      document.body.dataset.loaded = "1";
    } catch (e) {
      showError(e.message);
    }
  }

  refresh();
  setInterval(refresh, 5000);
})();
