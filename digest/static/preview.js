// Live preview of a subscriber's profile on the admin page: as the admin types, POST the form
// (with its CSRF token) to the preview endpoint, debounced, and show the server-rendered result.
// The fragments come from autoescaped templates; nothing typed is ever inserted as HTML here.
(function () {
  "use strict";
  var form = document.getElementById("profile-form");
  if (!form) { return; }
  var url = form.getAttribute("data-preview-url");
  var target = document.querySelector("[data-preview]");
  var stateEl = document.querySelector("[data-preview-state]");
  var noJsButton = form.querySelector("[data-nojs-preview]");
  if (noJsButton) { noJsButton.hidden = true; }
  var timer = null;
  var seq = 0;

  function setState(text) { if (stateEl) { stateEl.textContent = text; } }

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

  function refresh() {
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
      setState("");
      form.setAttribute("data-preview-seq", String(mine));
    }).catch(function (err) {
      if (mine === seq) { setState("preview unavailable (" + err.message + ")"); }
    });
  }

  form.addEventListener("input", function (event) {
    var name = event.target && event.target.name;
    if (name !== "topic_name" && name !== "topic_query") { return; }
    if (timer) { clearTimeout(timer); }
    timer = setTimeout(refresh, 350);
  });
})();
