// Live preview of a profile form (admin subscriber and add pages, public sign-up): as someone
// types, POST the form (with its CSRF token) to the preview endpoint, debounced, and show the
// server-rendered result. The fragments come from autoescaped templates; nothing typed is ever
// inserted as HTML here. Also: "Add a topic" rows, example topics, the browser's time zone.
(function () {
  "use strict";
  var form = document.getElementById("profile-form");
  if (!form) { return; }
  var url = form.getAttribute("data-preview-url");
  var target = document.querySelector("[data-preview]");
  var panel = target ? target.closest("section") : null;
  var home = panel ? { parent: panel.parentNode, next: panel.nextSibling } : null;
  var stateEl = document.querySelector("[data-preview-state]");
  var noJsButton = form.querySelector("[data-nojs-preview]");
  if (noJsButton) { noJsButton.hidden = true; }
  var narrow = window.matchMedia("(max-width: 900px)");
  var timer = null;
  var seq = 0;

  function setState(text) { if (stateEl) { stateEl.textContent = text; } }

  // On a narrow screen the preview sits just below the topic being typed in (not a screen or
  // more further down, after the whole form); on a wide one it stays in its column.
  function placePanel(field) {
    if (!panel || !home) { return; }
    var row = field && field.closest ? field.closest("[data-topic]") : null;
    if (narrow.matches && row) {
      if (row.nextSibling !== panel) { row.parentNode.insertBefore(panel, row.nextSibling); }
    } else if (panel.parentNode !== home.parent) {
      home.parent.insertBefore(panel, home.next);
    }
  }

  function showErrors(errors) {
    var slots = form.querySelectorAll("[data-topic-error]");
    var queries = form.querySelectorAll("textarea[name=topic_query]");
    for (var i = 0; i < slots.length; i++) {
      var html = errors[String(i)];
      slots[i].innerHTML = html || "";
      if (queries[i]) {
        if (html) { queries[i].setAttribute("aria-invalid", "true"); }
        else { queries[i].removeAttribute("aria-invalid"); }
      }
    }
  }

  // Warnings (probable mistakes) go beside the field like errors, but never mark it invalid.
  function showWarnings(warnings) {
    var slots = form.querySelectorAll("[data-topic-warning]");
    for (var i = 0; i < slots.length; i++) { slots[i].innerHTML = warnings[String(i)] || ""; }
  }

  function refresh() {
    if (!url || !target) { return; }
    var mine = ++seq;
    setState("updating…");
    fetch(url, {
      method: "POST",
      body: new FormData(form),
      credentials: "same-origin",
      headers: { "Accept": "application/json" }
    }).then(function (resp) {
      if (!resp.ok) { throw new Error("HTTP " + resp.status); }
      return resp.json();
    }).then(function (data) {
      if (mine !== seq) { return; }  // a newer request is on its way
      target.innerHTML = data.html;
      showErrors(data.errors || {});
      showWarnings(data.warnings || {});
      setState("");
      form.setAttribute("data-preview-seq", String(mine));
    }).catch(function (err) {
      if (mine === seq) { setState("preview unavailable (" + err.message + ")"); }
    });
  }

  function schedule() {
    if (timer) { clearTimeout(timer); }
    timer = setTimeout(refresh, 350);
  }

  form.addEventListener("input", function (event) {
    var name = event.target && event.target.name;
    if (name !== "topic_name" && name !== "topic_query") { return; }
    placePanel(event.target);
    schedule();
  });

  // "Add a topic": a copy of the last row, emptied and renumbered.
  var rows = form.querySelector("[data-topics]");
  function addRow() {
    var all = rows.querySelectorAll("[data-topic]");
    var last = all[all.length - 1];
    var copy = last.cloneNode(true);
    var n = all.length;
    copy.querySelector("legend").textContent = "Topic " + (n + 1);
    var fields = copy.querySelectorAll(
      "input, textarea, label, [data-topic-error], [data-topic-warning]");
    for (var i = 0; i < fields.length; i++) {
      var el = fields[i];
      if (el.id) { el.id = el.id.replace(/-\d+$/, "-" + n); }
      if (el.htmlFor) { el.htmlFor = el.htmlFor.replace(/-\d+$/, "-" + n); }
      if (el.hasAttribute("aria-describedby")) {
        el.setAttribute("aria-describedby",
          el.getAttribute("aria-describedby").replace(/topic-error-\d+/, "topic-error-" + n)
            .replace(/topic-warning-\d+/, "topic-warning-" + n));
      }
      if (el.value !== undefined && el.tagName !== "LABEL") { el.value = ""; }
      el.removeAttribute("aria-invalid");
      if (el.hasAttribute("data-topic-error") || el.hasAttribute("data-topic-warning")) {
        el.innerHTML = "";
      }
    }
    rows.appendChild(copy);
    return copy;
  }
  var addButton = form.querySelector("[data-add-topic]");
  if (addButton && rows) {
    addButton.hidden = false;
    addButton.addEventListener("click", function () {
      addRow().querySelector("input").focus();
    });
  }

  // Example topics (sign-up): fill the first empty row, or a new one, then preview.
  var examples = form.querySelectorAll("[data-example-query]");
  for (var e = 0; e < examples.length; e++) {
    examples[e].hidden = false;
    examples[e].addEventListener("click", function (event) {
      var button = event.currentTarget;
      var all = rows.querySelectorAll("[data-topic]");
      var row = null;
      for (var i = 0; i < all.length && !row; i++) {
        if (!all[i].querySelector("textarea").value.trim()) { row = all[i]; }
      }
      row = row || addRow();
      row.querySelector("input[name=topic_name]").value = button.getAttribute("data-example-name");
      var query = row.querySelector("textarea");
      query.value = button.getAttribute("data-example-query");
      placePanel(query);
      query.focus();
      schedule();
    });
  }

  // The time zone defaults to the browser's when the person has not chosen one.
  var tz = form.querySelector("[data-browser-tz]");
  if (tz && !tz.getAttribute("data-chosen")) {
    try {
      var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
      if (zone) { tz.value = zone; }
    } catch (err) { /* keep the server's default */ }
  }
})();
