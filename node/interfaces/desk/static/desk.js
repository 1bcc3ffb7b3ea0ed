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

// 督办答复的附件登记: files picked here are hashed in this browser (Web Crypto SHA-256) and only their
// name | size | SHA-256 | type lines are written into the form; the file input has no name, so the files
// themselves are never sent (they stay in the department's system).
(function () {
  "use strict";
  var inputs = document.querySelectorAll("input[type=file][data-attach-for]");
  Array.prototype.forEach.call(inputs, function (input) {
    var target = document.getElementById(input.getAttribute("data-attach-for"));
    var note = document.querySelector("[data-attach-note='" + input.getAttribute("data-attach-for") + "']");
    if (!target) {
      return;
    }
    if (!window.crypto || !window.crypto.subtle) {
      if (note) { note.textContent = "本浏览器不能在本机计算 SHA-256（需 HTTPS），请手工填写。"; }
      input.disabled = true;
      return;
    }
    function hex(buf) {
      return Array.prototype.map.call(new Uint8Array(buf), function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
    }
    input.addEventListener("change", function () {
      var files = Array.prototype.slice.call(input.files || []);
      if (note) { note.textContent = "正在计算 " + files.length + " 个文件的 SHA-256……"; }
      Promise.all(files.map(function (f) {
        return f.arrayBuffer().then(function (buf) { return window.crypto.subtle.digest("SHA-256", buf); })
          .then(function (d) {
            return f.name.replace(/[|\r\n]/g, "_") + " | " + f.size + " | " + hex(d) + " | " + (f.type || "application/octet-stream");
          });
      })).then(function (lines) {
        var now = target.value.replace(/\s+$/, "");
        target.value = (now ? now + "\n" : "") + lines.join("\n");
        target.setAttribute("data-hashed", String(lines.length));
        if (note) { note.textContent = "已登记 " + lines.length + " 个文件的信息（文件未上传）。"; }
        input.value = "";
      }, function (e) {
        if (note) { note.textContent = "计算失败：" + e; }
      });
    });
  });
})();

// 办件的“验证”徽章: the case page comes without the proofs (they cost tens of ms); this asks for the same page
// with ?verify=1 and puts its badge and result in place. The answer is the desk's own escaped HTML, parsed as
// an inert document (no script runs from it; the CSP forbids inline script anyway). Without this file the
// badge is a link to that page.
(function () {
  "use strict";
  var badge = document.querySelector("[data-verify-href]");
  if (!badge || !window.fetch || !window.DOMParser) {
    return;
  }
  badge.textContent = "验证中…";
  window.fetch(badge.getAttribute("data-verify-href"), { credentials: "same-origin" }).then(function (r) {
    return r.ok ? r.text() : Promise.reject(new Error("HTTP " + r.status));
  }).then(function (html) {
    var doc = new window.DOMParser().parseFromString(html, "text/html");
    ["case-verify", "case-verify-detail"].forEach(function (id) {
      var fresh = doc.querySelector("[data-testid='" + id + "']");
      var old = document.querySelector("[data-testid='" + id + "']");
      if (fresh && old) {
        old.parentNode.replaceChild(document.importNode(fresh, true), old);
      }
    });
  }, function () {
    badge.textContent = "验证";
  });
})();
