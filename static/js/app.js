/* Operator UI behaviour: toasts and charts. Everything is wired from data attributes. */
(function () {
  "use strict";

  var TOAST_MS = 5000;
  var TOAST_ERROR_MS = 9000;

  function dismissToast(toast) {
    if (!toast || toast.classList.contains("is-leaving")) return;
    toast.classList.add("is-leaving");
    window.setTimeout(function () {
      toast.remove();
    }, 300);
  }

  // Elements matching `selector` at or under `root` (htmx:load hands over the new element itself).
  function within(root, selector) {
    if (!root || !root.querySelectorAll) return [];
    var found = Array.prototype.slice.call(root.querySelectorAll(selector));
    if (root.matches && root.matches(selector)) found.unshift(root);
    return found;
  }

  function scheduleToasts(root) {
    within(root, "[data-toast]").forEach(function (toast) {
      if (toast.dataset.scheduled) return;
      toast.dataset.scheduled = "1";
      var ms = toast.classList.contains("toast-error") ? TOAST_ERROR_MS : TOAST_MS;
      var timer = window.setTimeout(function () {
        dismissToast(toast);
      }, ms);
      // Keep a toast on screen while the pointer rests on it.
      toast.addEventListener("mouseenter", function () {
        window.clearTimeout(timer);
      });
      toast.addEventListener("mouseleave", function () {
        timer = window.setTimeout(function () {
          dismissToast(toast);
        }, 1500);
      });
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-dismiss='toast']");
    if (button) dismissToast(button.closest("[data-toast]"));
  });

  function readJson(id) {
    var node = document.getElementById(id);
    if (!node) return null;
    try {
      return JSON.parse(node.textContent);
    } catch (err) {
      return null;
    }
  }

  var charts = [];

  function lineOption(el, data) {
    var xKey = el.dataset.chartX || "x";
    var yKey = el.dataset.chartY || "y";
    return {
      color: ["#2563eb"],
      grid: { left: 40, right: 16, top: 24, bottom: 28 },
      tooltip: { trigger: "axis" },
      xAxis: {
        type: "category",
        boundaryGap: false,
        data: data[xKey] || [],
        axisLine: { lineStyle: { color: "#cdd4df" } },
        axisLabel: { color: "#8a94a6" },
      },
      yAxis: {
        type: "value",
        minInterval: 1,
        splitLine: { lineStyle: { color: "#eef1f6" } },
        axisLabel: { color: "#8a94a6" },
      },
      series: [
        {
          name: el.dataset.chartName || "",
          type: "line",
          smooth: 0.25,
          showSymbol: false,
          data: data[yKey] || [],
          lineStyle: { width: 2 },
          areaStyle: {
            color: {
              type: "linear",
              x: 0,
              y: 0,
              x2: 0,
              y2: 1,
              colorStops: [
                { offset: 0, color: "rgba(37, 99, 235, 0.25)" },
                { offset: 1, color: "rgba(37, 99, 235, 0.02)" },
              ],
            },
          },
        },
      ],
    };
  }

  var OPTION_BUILDERS = { line: lineOption };

  function initCharts(root) {
    if (!window.echarts) return;
    within(root, "[data-chart]").forEach(function (el) {
      if (el.dataset.chartReady) return;
      var build = OPTION_BUILDERS[el.dataset.chart];
      var data = readJson(el.dataset.chartSource);
      if (!build || !data) return;
      el.dataset.chartReady = "1";
      var chart = window.echarts.init(el, null, { renderer: "svg" });
      chart.setOption(build(el, data));
      charts.push(chart);
    });
  }

  window.addEventListener("resize", function () {
    charts.forEach(function (chart) {
      chart.resize();
    });
  });

  function init(root) {
    scheduleToasts(root);
    initCharts(root);
  }

  document.addEventListener("DOMContentLoaded", function () {
    init(document);
    // htmx swaps (including out-of-band toasts) bring new content to initialise.
    document.body.addEventListener("htmx:load", function (event) {
      init(event.target);
    });
  });
})();
