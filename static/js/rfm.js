/* RFM page: the R × F heat-map, drawn from the json_script its element names. */
(function () {
  "use strict";

  var charts = [];

  // Room kept under the plot for the colour scale; the axis labels and names are fitted into
  // the rest of the box by ECharts (outerBoundsMode "same"), so they can never run into it
  // whatever the language or the width of the card.
  var SCALE_HEIGHT = 40;

  function heatmapOption(data, font) {
    var buyers = {};
    var avgM = {};
    data.cells.forEach(function (cell) {
      buyers[cell[0] + ":" + cell[1]] = cell[2];
      avgM[cell[0] + ":" + cell[1]] = cell[3];
    });
    // Every R × F combination gets a cell, so an empty one reads "0" instead of looking like
    // a pale, populated cell.
    var cells = [];
    data.scores.forEach(function (_r, x) {
      data.scores.forEach(function (_f, y) {
        cells.push([x, y, buyers[x + ":" + y] || 0]);
      });
    });
    var axisText = { color: "#475569", fontSize: 12 };
    var axisName = { color: "#334155", fontSize: 12, fontWeight: 600 };
    return {
      textStyle: { fontFamily: font },
      grid: {
        left: 0,
        right: 0,
        top: 8,
        bottom: SCALE_HEIGHT,
        outerBoundsMode: "same",
        outerBoundsContain: "all",
      },
      tooltip: {
        formatter: function (p) {
          var sep = /^zh/i.test(document.documentElement.lang) ? "：" : ": ";
          var key = p.value[0] + ":" + p.value[1];
          return (
            "R " + data.scores[p.value[0]] + " · F " + data.scores[p.value[1]] + "<br>" +
            data.buyers_label + sep + p.value[2] + "<br>" +
            data.avg_m_label + sep + (avgM[key] === undefined ? "—" : avgM[key])
          );
        },
      },
      xAxis: {
        type: "category",
        data: data.scores,
        name: data.x_name,
        nameLocation: "middle",
        nameGap: 28,
        nameTextStyle: axisName,
        axisTick: { show: false },
        axisLabel: Object.assign({ interval: 0 }, axisText),
        splitArea: { show: true },
      },
      yAxis: {
        type: "category",
        data: data.scores,
        name: data.y_name,
        nameLocation: "middle",
        nameGap: 24,
        nameTextStyle: axisName,
        axisTick: { show: false },
        axisLabel: Object.assign({ interval: 0 }, axisText),
        splitArea: { show: true },
      },
      visualMap: {
        type: "continuous",
        min: 0,
        max: Math.max(1, data.max),
        // No drag handles and no hover marker: their value labels float above the bar, into
        // the x-axis name; the two ends are labelled instead.
        calculable: false,
        hoverLink: false,
        text: [String(Math.max(1, data.max)), "0"],
        textStyle: axisText,
        orient: "horizontal",
        left: "center",
        bottom: 4,
        itemWidth: 12,
        itemHeight: 160,
        inRange: { color: ["#eff6ff", "#2563eb"] },
      },
      series: [
        {
          type: "heatmap",
          data: cells,
          label: { show: true },
          itemStyle: { borderColor: "#fff", borderWidth: 1 },
          emphasis: { itemStyle: { borderColor: "#1e3a8a", borderWidth: 1 } },
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
      // The page's own font, so Chinese axis names use the same face as the rest of the page.
      chart.setOption(heatmapOption(data, window.getComputedStyle(el).fontFamily));
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
