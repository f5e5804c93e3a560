/* Segment builder: mark the rows busy while the server re-renders them, and show the live
   preview's validation error next to the condition it concerns (the server renders the message;
   this only moves it to the row named by the preview's data-error-path). */
(function () {
  "use strict";

  function builder() {
    return document.getElementById("rule-builder");
  }

  function isBuilder(element) {
    return element && element.id === "rule-builder";
  }

  // The preview validates the rule as it is now, so its errors replace whatever the rows show
  // (including an error rendered by the last save that has since been fixed). Every invalid
  // condition is marked at once. A condition still to be filled in (a row just added, a value
  // cleared) is not marked while the operator has yet to type: only where the last refused save
  // already marked it (errors this script did not add), so what the save said stays visible.
  function showLiveError() {
    var rows = builder();
    var preview = document.getElementById("rule-preview");
    if (!rows || !preview) return;
    var saved = {};
    rows.querySelectorAll(".rule-error").forEach(function (node) {
      var row = node.closest("[data-path]");
      if (row && !node.dataset.live) saved[row.dataset.path] = true;
      node.remove();
    });
    rows.querySelectorAll(".has-error").forEach(function (node) {
      node.classList.remove("has-error");
    });
    preview.querySelectorAll("[data-error-path]").forEach(function (error) {
      var path = error.dataset.errorPath;
      var row = rows.querySelector('[data-path="' + path + '"]');
      var template = error.querySelector("template");
      if (!row || !template || row.classList.contains("has-error")) return;
      var unfilled = error.hasAttribute("data-unfilled");
      if (unfilled && !saved[path]) return;
      var message = template.content.cloneNode(true);
      var node = message.querySelector(".rule-error");
      // Kept across previews while still unfilled: it came from the save.
      if (node && !unfilled) node.dataset.live = "1";
      if (row.matches("fieldset")) {
        row.querySelector(":scope > legend").after(message);
      } else {
        row.appendChild(message);
      }
      row.classList.add("has-error");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.body.addEventListener("htmx:beforeRequest", function (event) {
      if (isBuilder(event.detail.target)) event.detail.target.setAttribute("aria-busy", "true");
    });
    document.body.addEventListener("htmx:afterRequest", function (event) {
      // A failed request leaves the old rows in place: they are usable again.
      if (isBuilder(event.detail.target)) event.detail.target.removeAttribute("aria-busy");
    });
    document.body.addEventListener("htmx:afterSettle", function (event) {
      if (event.detail.target && event.detail.target.id === "rule-preview") showLiveError();
    });
  });
})();
