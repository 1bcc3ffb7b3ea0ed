// 监察工作台: progressive enhancement only. Every page works without this file.
// The statistics chart: data from <script type="application/json" id="chart-data"> (not executed),
// drawn with the vendored Apache ECharts (static/vendor/echarts/).
(function () {
  "use strict";
  var el = document.getElementById("chart");
  var src = document.getElementById("chart-data");
  if (!el || !src || typeof window.echarts === "undefined") {
    return;
  }
  var data = JSON.parse(src.textContent || "{}");
  if (!data.labels || data.labels.length === 0) {
    el.textContent = "没有可绘制的数据。";
    return;
  }
  var chart = window.echarts.init(el);
  chart.setOption({
    animation: false,
    tooltip: { trigger: "axis", valueFormatter: function (v) { return v == null ? "—" : (v * 100).toFixed(1) + "%"; } },
    legend: { top: 0 },
    grid: { left: 50, right: 20, top: 40, bottom: 40 },
    xAxis: { type: "category", data: data.labels },
    yAxis: { type: "value", min: 0, max: 1, axisLabel: { formatter: function (v) { return (v * 100).toFixed(0) + "%"; } } },
    series: data.series.map(function (s) { return { name: s.name, type: "bar", data: s.values }; })
  });
  el.setAttribute("data-rendered", "1");
  window.addEventListener("resize", function () { chart.resize(); });
})();
