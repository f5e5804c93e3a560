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

  // The preview validates the rule as it is now, so its error replaces whatever the rows show
  // (including an error rendered by the last save that has since been fixed).
  function showLiveError() {
    var rows = builder();
    var preview = document.getElementById("rule-preview");
    if (!rows || !preview) return;
    rows.querySelectorAll(".rule-error").forEach(function (node) {
      node.remove();
    });
    rows.querySelectorAll(".has-error").forEach(function (node) {
      node.classList.remove("has-error");
    });
    var error = preview.querySelector("[data-error-path]");
    var row = error && rows.querySelector('[data-path="' + error.dataset.errorPath + '"]');
    var template = error && error.querySelector("template");
    if (!row || !template) return;
    var message = template.content.cloneNode(true);
    if (row.matches("fieldset")) {
      row.querySelector(":scope > legend").after(message);
    } else {
      row.appendChild(message);
    }
    row.classList.add("has-error");
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
