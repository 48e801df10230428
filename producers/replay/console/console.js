// Herald's operator console. Everything shown comes from the admin APIs, called with the
// access token of the admin who signed in, and is written as text (never as markup): dead
// letters carry what clients sent.
"use strict";

const TOKEN_KEY = "herald.console.token";
const LAG_EVERY_MS = 2000;
const SLOW_EVERY_MS = 10000;

const $ = (id) => document.getElementById(id);
let timers = [];
let previousLag = null; // {at: ms, committed: {group: n}}
const expanded = new Set(); // groups whose partitions are shown
let letters = []; // the dead letters on show
let lettersGroup = null; // the group they are of
let pendingMarks = null; // what the confirmation box would redrive

// --- calls -------------------------------------------------------------------------------

class Refused extends Error {
  constructor(status, problem) {
    super(`${status} ${problem.title || ""}: ${problem.detail || ""}`.trim());
    this.status = status;
  }
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const refused = new Refused(response.status, answer);
    if (response.status === 401 && token) signOut("Your session has ended: sign in again.");
    throw refused;
  }
  return answer;
}

// --- small DOM helpers -------------------------------------------------------------------

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function row(cells, className) {
  const tr = document.createElement("tr");
  if (className) tr.className = className;
  for (const td of cells) tr.append(td);
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function say(element, text, kind) {
  element.textContent = text;
  element.className = kind || "status";
}

const number = (n, digits = 0) =>
  n === null || n === undefined ? "?" : Number(n).toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });

// --- signing in and out ------------------------------------------------------------------

function claims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload));
  } catch {
    return {};
  }
}

async function signIn(event) {
  event.preventDefault();
  say($("sign-in-error"), "", "error");
  const credentials = { email: $("email").value, password: $("password").value };
  try {
    const session = await call("POST", "/api/v1/auth/login", credentials);
    sessionStorage.setItem(TOKEN_KEY, session.access_token);
    $("password").value = "";
    await open();
  } catch (err) {
    say($("sign-in-error"), `Not signed in: ${err.message}`, "error");
  }
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  for (const timer of timers) clearInterval(timer);
  timers = [];
  previousLag = null;
  $("panels").hidden = true;
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  say($("sign-in-error"), message || "", "error");
}

// Shows the panels if the token may see them: the first call is the authorization check.
async function open() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return;
  try {
    await refreshLag();
  } catch (err) {
    signOut(err.status === 403 ? `Refused: ${err.message}` : `Not available: ${err.message}`);
    return;
  }
  const who = claims(token);
  $("who").textContent = `${who.sub || "?"} (${(who.roles || []).join(", ")})`;
  $("sign-in").hidden = true;
  $("panels").hidden = false;
  $("sign-out").hidden = false;
  refreshAudit();
  refreshReports();
  refreshAlerts();
  timers.push(setInterval(() => refreshLag().catch(showLagError), LAG_EVERY_MS));
  timers.push(setInterval(refreshAlerts, SLOW_EVERY_MS));
  timers.push(setInterval(refreshAudit, SLOW_EVERY_MS));
  timers.push(setInterval(refreshReports, SLOW_EVERY_MS));
}

// --- consumer groups ---------------------------------------------------------------------

function showLagError(err) {
  say($("lag-status"), `Not refreshed: ${err.message}`, "error");
}

async function refreshLag() {
  const answer = await call("GET", "/api/v1/admin/consumers");
  const now = Date.now();
  const committed = {};
  const rows = [];
  for (const group of answer.groups) {
    committed[group.group] = group.committed;
    let throughput = "–";
    if (previousLag && previousLag.committed[group.group] !== undefined) {
      const seconds = (now - previousLag.at) / 1000;
      const read = group.committed - previousLag.committed[group.group];
      if (seconds > 0) throughput = number(Math.max(read, 0) / seconds, 1);
    }
    const name = document.createElement("td");
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "toggle";
    toggle.textContent = `${expanded.has(group.group) ? "▾" : "▸"} ${group.group}`;
    toggle.title = "partitions";
    toggle.addEventListener("click", () => {
      if (!expanded.delete(group.group)) expanded.add(group.group);
      refreshLag().catch(showLagError);
    });
    name.append(toggle);
    const tr = row(
      [
        name,
        cell(group.state),
        cell(group.members, "number"),
        cell(number(group.committed), "number committed"),
        cell(number(group.lag), "number lag"),
        cell(number(group.lag_seconds, 1), "number lag-seconds"),
        cell(throughput, "number throughput"),
      ],
      group.lag > 0 ? "group lagging" : "group",
    );
    tr.dataset.group = group.group;
    rows.push(tr);
    if (!expanded.has(group.group)) continue;
    for (const p of group.partitions) {
      rows.push(
        row(
          [
            cell(`${p.topic} / ${p.partition}`),
            cell(""),
            cell(""),
            cell(`${number(p.committed)} of ${number(p.end)}`, "number"),
            cell(number(p.lag), "number lag"),
            cell(number(p.lag_seconds, 1), "number"),
            cell(""),
          ],
          p.lag > 0 ? "partition lagging" : "partition",
        ),
      );
    }
  }
  fill($("lag").tBodies[0], rows);
  previousLag = { at: now, committed };
  say($("lag-status"), `${answer.groups.length} groups (▸ shows a group's partitions), as of ${new Date(answer.at).toLocaleTimeString()}; refreshed every ${LAG_EVERY_MS / 1000} s`);
  groupChoices(answer.groups.map((g) => g.group));
}

function groupChoices(groups) {
  const select = $("dl-group");
  const shown = [...select.options].map((o) => o.value);
  if (shown.join("\n") === groups.join("\n")) return;
  const chosen = select.value;
  select.replaceChildren(
    ...groups.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      return option;
    }),
  );
  if (groups.includes(chosen)) select.value = chosen;
}

// --- dead letters ------------------------------------------------------------------------

async function showLetters(event) {
  if (event) event.preventDefault();
  const group = $("dl-group").value;
  if (!group) return;
  $("dl-confirm").hidden = true;
  pendingMarks = null;
  try {
    const answer = await call("GET", `/api/v1/admin/dead-letters/${encodeURIComponent(group)}`);
    letters = answer.letters;
    lettersGroup = group;
    const rows = letters.map((letter) => {
      const pick = document.createElement("input");
      pick.type = "checkbox";
      pick.value = letter.mark;
      pick.disabled = letter.redriven;
      pick.addEventListener("change", updateRedriveButtons);
      const choose = document.createElement("td");
      choose.append(pick);
      const what = document.createElement("td");
      const details = document.createElement("details");
      const summary = document.createElement("summary");
      summary.textContent = `${letter.event_type || "undecodable"} ${letter.event_id || ""}`;
      const body = document.createElement("pre");
      body.textContent = JSON.stringify(letter.event, null, 2);
      details.append(summary, body);
      what.append(details);
      const tr = row([
        choose,
        what,
        cell(`${letter.topic} ${letter.from || ""}`),
        cell(letter.error, "error"),
        cell(letter.attempts, "number"),
        cell(letter.redriven ? "redriven" : "waiting", letter.redriven ? "ok" : ""),
      ]);
      tr.dataset.mark = letter.mark;
      return tr;
    });
    fill($("dl").tBodies[0], rows);
    say($("dl-status"), `${group}: ${answer.waiting} waiting of ${letters.length}`);
  } catch (err) {
    letters = [];
    lettersGroup = null;
    fill($("dl").tBodies[0], []);
    say($("dl-status"), err.message, "error");
  }
  updateRedriveButtons();
}

function selectedMarks() {
  return [...$("dl").querySelectorAll("input[type=checkbox]:checked")].map((box) => box.value);
}

function updateRedriveButtons() {
  $("dl-redrive-selected").disabled = selectedMarks().length === 0;
  $("dl-redrive-all").disabled = !letters.some((letter) => !letter.redriven);
}

// The marks name places in the group the list is of, whatever the menu says since.
function askRedrive(marks) {
  if (marks.length === 0 || !lettersGroup) return;
  pendingMarks = { group: lettersGroup, marks };
  say($("dl-confirm-text"), `Publish ${marks.length} dead letter${marks.length === 1 ? "" : "s"} of ${pendingMarks.group} again to their topics? Each consumer applies an event once, by its id.`);
  $("dl-confirm").hidden = false;
}

async function confirmRedrive() {
  const pending = pendingMarks;
  pendingMarks = null;
  $("dl-confirm").hidden = true;
  if (!pending) return;
  try {
    const answer = await call(
      "POST",
      `/api/v1/admin/dead-letters/${encodeURIComponent(pending.group)}/redrive`,
      { marks: pending.marks },
    );
    say($("dl-result"), `Redriven: ${answer.redriven.length} of ${pending.group}.`, "ok");
  } catch (err) {
    say($("dl-result"), `Nothing redriven: ${err.message}`, "error");
  }
  await showLetters();
}

// --- audit log ---------------------------------------------------------------------------

function verification(outcome) {
  if (!outcome) return ["Not verified since this process started.", "status"];
  const when = new Date(outcome.verified_at).toLocaleString();
  if (outcome.passed) {
    return [`Intact: ${number(outcome.rows)} rows in ${outcome.chains} chains verified at ${when} (${number(outcome.seconds, 2)} s).`, "ok"];
  }
  const faults = outcome.failures.map((f) => f.fault).join("; ");
  return [`TAMPERED: ${outcome.failures.length} of ${outcome.chains} chains fail (${when}): ${faults}`, "error"];
}

async function refreshAudit() {
  try {
    const answer = await call("GET", "/api/v1/audit/chains");
    fill(
      $("chains").tBodies[0],
      answer.chains.map((c) => row([cell(c.chain), cell(number(c.rows), "number"), cell(c.offset, "number"), cell(c.head ? c.head.slice(0, 16) + "…" : "")])),
    );
    if (answer.last_verification) say($("verify-result"), ...verification(answer.last_verification));
  } catch (err) {
    say($("verify-result"), err.message, "error");
  }
}

async function verify() {
  $("verify").disabled = true;
  say($("verify-result"), "Verifying…");
  try {
    say($("verify-result"), ...verification(await call("POST", "/api/v1/audit/verify")));
    await refreshAudit();
  } catch (err) {
    say($("verify-result"), err.message, "error");
  }
  $("verify").disabled = false;
}

// --- reports -----------------------------------------------------------------------------

// The outputs need the token, which a plain link does not send: fetched, then saved.
async function download(event) {
  event.preventDefault();
  const link = event.currentTarget;
  try {
    const response = await fetch(link.href, {
      headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` },
      credentials: "omit",
    });
    if (!response.ok) throw new Refused(response.status, await response.json().catch(() => ({})));
    const url = URL.createObjectURL(await response.blob());
    const save = document.createElement("a");
    save.href = url;
    save.download = link.dataset.file;
    save.click();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    say($("reports-status"), err.message, "error");
  }
}

function outputLink(path, label) {
  const link = document.createElement("a");
  link.href = path;
  link.textContent = label;
  link.dataset.file = path.split("/").pop();
  link.addEventListener("click", download);
  return link;
}

async function refreshReports() {
  try {
    const answer = await call("GET", "/api/v1/reports?limit=20");
    fill(
      $("report-runs").tBodies[0],
      answer.items.map((r) => {
        const links = document.createElement("td");
        links.append(outputLink(r.html, "page"), " ", outputLink(r.csv, "CSV"));
        return row([cell(r.report), cell(r.period), cell(new Date(r.created_at).toLocaleString()), links]);
      }),
    );
    say($("reports-status"), answer.items.length ? `The last ${answer.items.length} runs` : "No report has run yet.");
  } catch (err) {
    say($("reports-status"), err.message, "error");
  }
}

// --- alerts ------------------------------------------------------------------------------

async function refreshAlerts() {
  try {
    const answer = await call("GET", "/api/v1/admin/alerts");
    fill(
      $("alert-list").tBodies[0],
      answer.alerts.map((a) => row([cell(new Date(a.at).toLocaleString()), cell(a.kind.replace("_", " ")), cell(a.what), cell(a.detail)], a.kind)),
    );
    say($("alerts-status"), answer.alerts.length ? `${answer.alerts.length} recent` : "None since this process started.");
  } catch (err) {
    say($("alerts-status"), err.message, "error");
  }
}

// --- wiring ------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  $("dl-form").addEventListener("submit", showLetters);
  // Another group chosen: the list on show is not its, until shown.
  $("dl-group").addEventListener("change", () => {
    letters = [];
    lettersGroup = null;
    pendingMarks = null;
    $("dl-confirm").hidden = true;
    fill($("dl").tBodies[0], []);
    say($("dl-status"), "");
    updateRedriveButtons();
  });
  $("dl-redrive-selected").addEventListener("click", () => askRedrive(selectedMarks()));
  $("dl-redrive-all").addEventListener("click", () =>
    askRedrive(letters.filter((letter) => !letter.redriven).map((letter) => letter.mark)),
  );
  $("dl-confirm-yes").addEventListener("click", confirmRedrive);
  $("dl-confirm-no").addEventListener("click", () => {
    pendingMarks = null;
    $("dl-confirm").hidden = true;
  });
  $("verify").addEventListener("click", verify);
  open();
});
