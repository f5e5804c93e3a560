/* RFM page: the R × F heat-map, drawn from the json_script its element names. */
(function () {
  "use strict";

  var charts = [];

  function heatmapOption(data) {
    var avgM = {};
    data.cells.forEach(function (cell) {
      avgM[cell[0] + ":" + cell[1]] = cell[3];
    });
    return {
      grid: { left: 56, right: 16, top: 16, bottom: 72 },
      tooltip: {
        formatter: function (p) {
          return (
            "R " + data.scores[p.value[0]] + " · F " + data.scores[p.value[1]] + "<br>" +
            data.buyers_label + ": " + p.value[2] + "<br>" +
            data.avg_m_label + ": " + avgM[p.value[0] + ":" + p.value[1]]
          );
        },
      },
      xAxis: {
        type: "category",
        data: data.scores,
        name: data.x_name,
        nameLocation: "middle",
        nameGap: 28,
        splitArea: { show: true },
      },
      yAxis: {
        type: "category",
        data: data.scores,
        name: data.y_name,
        nameLocation: "middle",
        nameGap: 36,
        splitArea: { show: true },
      },
      visualMap: {
        min: 0,
        max: Math.max(1, data.max),
        calculable: true,
        orient: "horizontal",
        left: "center",
        bottom: 0,
        itemHeight: 120,
        inRange: { color: ["#eff6ff", "#2563eb"] },
      },
      series: [
        {
          type: "heatmap",
          data: data.cells.map(function (cell) {
            return [cell[0], cell[1], cell[2]];
          }),
          label: { show: true },
        },
      ],
    };
  }

  function init(root) {
    if (!window.echarts || !root || !root.querySelectorAll) return;
    var nodes = Array.prototype.slice.call(root.querySelectorAll("[data-chart='rfm-heatmap']"));
    nodes.forEach(function (el) {
      if (el.dataset.chartReady) return;
      var source = document.getElementById(el.dataset.chartSource);
      if (!source) return;
      var data;
      try {
        data = JSON.parse(source.textContent);
      } catch (err) {
        return;
      }
      if (!data || !data.cells) return;
      el.dataset.chartReady = "1";
      var chart = window.echarts.init(el, null, { renderer: "svg" });
      chart.setOption(heatmapOption(data));
      charts.push(chart);
    });
  }

  window.addEventListener("resize", function () {
    charts.forEach(function (chart) {
      chart.resize();
    });
  });

  document.addEventListener("DOMContentLoaded", function () {
    init(document);
    document.body.addEventListener("htmx:load", function (event) {
      init(event.target.parentNode || event.target);
    });
  });
})();
