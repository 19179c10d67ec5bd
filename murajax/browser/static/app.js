/* murajax study browser: plain JavaScript, no libraries, works from file://.
 * The data come from data.js (window.MURAJAX_DATA), written by murajax.browser.write_browser.
 * Every string from the data is shown with textContent (never innerHTML). */
(function () {
  "use strict";

  const DATA = window.MURAJAX_DATA;
  const $ = (selector) => document.querySelector(selector);

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "className") node.className = value;
      else node.setAttribute(name, value);
    }
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function formatNumber(value, digits) {
    if (value === null || value === undefined) return "\u2014";
    if (Number.isInteger(value) && Math.abs(value) >= 2) return String(value);
    return value.toFixed(digits === undefined ? 3 : digits);
  }

  // The id without its group's prefix ("valid/XR_WRIST/patient1/study1" -> "patient1/study1"):
  // the body part has its own column; the row's title and data-study-id keep the whole id.
  function shortId(study) {
    // MURA's ids start "valid/XR_WRIST/...": drop everything up to the group's folder too.
    const marker = study.group ? study.group + "/" : "";
    const at = marker ? study.id.indexOf(marker) : -1;
    return at >= 0 && (at === 0 || study.id[at - 1] === "/")
      ? study.id.slice(at + marker.length)
      : study.id;
  }

  function formatSet(set) {
    return "{" + set.join(", ") + "}";
  }

  if (!DATA || !Array.isArray(DATA.studies)) {
    document.body.textContent = "The study browser's data (data.js) did not load.";
    return;
  }

  const studies = DATA.studies;
  const hasGroups = DATA.groups.length > 0;
  const hasSets = studies.some((s) => s.set.length > 0);
  const state = {
    sortKey: "prob",
    sortDir: -1,
    selected: -1,
    method: DATA.methods.length ? DATA.methods[0] : null,
    opacity: 0.6,
  };

  // ---- the worklist's columns ----
  const COLUMNS = [
    { key: "id", title: "Study", value: (s) => s.id, text: shortId },
    { key: "group", title: "Body part", value: (s) => s.group || "", text: (s) => s.group || "",
      show: hasGroups },
    { key: "label", title: "Label", value: (s) => s.label, text: (s) => s.label },
    { key: "prob", title: "Prob.", numeric: true, firstDir: -1,
      value: (s) => (s.prob === null ? -Infinity : s.prob), text: (s) => formatNumber(s.prob) },
    { key: "decision", title: "Decision", value: (s) => s.decision, text: (s) => s.decision },
    { key: "set", title: "Conformal set", show: hasSets,
      value: (s) => [s.set.length, s.set.join(",")], text: (s) => formatSet(s.set) },
    { key: "referred", title: "Referred", firstDir: -1, value: (s) => (s.referred ? 1 : 0),
      text: (s) => (s.referred ? "yes" : "") },
    { key: "correct", title: "Result", value: (s) => (s.correct ? 1 : 0),
      text: (s) => (s.correct ? "\u2713" : "\u2717") },
  ].filter((c) => c.show !== false);

  function compareValues(a, b) {
    if (Array.isArray(a)) {
      for (let i = 0; i < a.length; i++) {
        const c = compareValues(a[i], b[i]);
        if (c !== 0) return c;
      }
      return 0;
    }
    if (typeof a === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  // ---- building the table once ----
  const tbody = $("#worklist tbody");
  const rows = [];

  function buildHeader() {
    const tr = $("#worklist thead tr");
    for (const column of COLUMNS) {
      const th = el("th", { "data-key": column.key, scope: "col", tabindex: "0",
        className: "sortable" + (column.numeric ? " num" : "") }, column.title);
      th.addEventListener("click", () => sortBy(column.key));
      th.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          sortBy(column.key);
        }
      });
      tr.appendChild(th);
    }
  }

  function buildRows() {
    const fragment = document.createDocumentFragment();
    studies.forEach((study, index) => {
      const tr = el("tr", { className: "study-row" + (study.correct ? "" : " wrong"),
        "data-index": String(index), "data-study-id": study.id,
        "data-prob": study.prob === null ? "" : String(study.prob) });
      for (const column of COLUMNS) {
        const td = el("td", { className: "col-" + column.key + (column.numeric ? " num" : "") },
          column.text(study));
        if (column.key === "correct") {
          td.classList.add(study.correct ? "ok" : "err");
          td.title = study.correct ? "right" : "wrong";
        }
        if (column.key === "id") td.title = study.id;
        if (column.key === "referred" && study.referred) td.classList.add("flag");
        if (column.key === "decision" && study.decision !== study.label) td.classList.add("err");
        tr.appendChild(td);
      }
      rows.push(tr);
      fragment.appendChild(tr);
    });
    tbody.appendChild(fragment);
    tbody.addEventListener("click", (event) => {
      const tr = event.target.closest("tr.study-row");
      if (tr) select(Number(tr.dataset.index));
    });
  }

  // ---- sorting ----
  function sortBy(key) {
    if (state.sortKey === key) state.sortDir = -state.sortDir;
    else {
      state.sortKey = key;
      const column = COLUMNS.find((c) => c.key === key);
      state.sortDir = column.firstDir || 1;
    }
    applySort();
  }

  function applySort() {
    const column = COLUMNS.find((c) => c.key === state.sortKey);
    const order = studies.map((_, i) => i);
    order.sort((i, j) =>
      state.sortDir * compareValues(column.value(studies[i]), column.value(studies[j])) || i - j);
    const fragment = document.createDocumentFragment();
    for (const i of order) fragment.appendChild(rows[i]);
    tbody.appendChild(fragment);
    for (const th of document.querySelectorAll("#worklist thead th")) {
      const active = th.dataset.key === state.sortKey;
      th.classList.toggle("sorted", active);
      if (active) th.setAttribute("aria-sort", state.sortDir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  // ---- filtering ----
  function buildFilters() {
    const group = $("#filter-group");
    if (hasGroups) {
      for (const name of DATA.groups) group.appendChild(el("option", { value: name }, name));
    } else {
      $("#filter-group-label").hidden = true;
    }
    const setsize = $("#filter-setsize");
    if (hasSets) {
      const sizes = Array.from(new Set(studies.map((s) => s.set.length))).sort((a, b) => a - b);
      for (const size of sizes) setsize.appendChild(el("option", { value: String(size) }, String(size)));
    } else {
      setsize.closest("label").hidden = true;
    }
    for (const id of ["#filter-group", "#filter-setsize", "#filter-errors", "#filter-referred"]) {
      $(id).addEventListener("change", applyFilters);
    }
  }

  function matches(study) {
    const group = $("#filter-group").value;
    const setsize = $("#filter-setsize").value;
    if (group !== "" && study.group !== group) return false;
    if (setsize !== "" && study.set.length !== Number(setsize)) return false;
    if ($("#filter-errors").checked && study.correct) return false;
    if ($("#filter-referred").checked && !study.referred) return false;
    return true;
  }

  function applyFilters() {
    let shown = 0;
    studies.forEach((study, index) => {
      const visible = matches(study);
      rows[index].hidden = !visible;
      if (visible) shown += 1;
    });
    $("#count").textContent = shown + " of " + studies.length + " studies";
  }

  function visibleRows() {
    return Array.from(tbody.querySelectorAll("tr.study-row:not([hidden])"));
  }

  // ---- selection and the study panel ----
  function select(index) {
    if (index < 0 || index >= studies.length) return;
    if (state.selected >= 0) {
      rows[state.selected].classList.remove("selected");
      rows[state.selected].removeAttribute("aria-selected");
    }
    state.selected = index;
    rows[index].classList.add("selected");
    rows[index].setAttribute("aria-selected", "true");
    rows[index].scrollIntoView({ block: "nearest", inline: "nearest" });
    showStudy(studies[index]);
    $("#tab-study").disabled = false;
    showTab("study");
  }

  function move(step) {
    const visible = visibleRows();
    if (!visible.length) return;
    const at = visible.indexOf(rows[state.selected]);
    let next;
    if (at < 0) next = step > 0 ? 0 : visible.length - 1;
    else next = Math.min(visible.length - 1, Math.max(0, at + step));
    select(Number(visible[next].dataset.index));
  }

  function chip(text, className) {
    return el("span", { className: "chip" + (className ? " " + className : "") }, text);
  }

  function studyMethods(study) {
    const present = new Set();
    for (const view of study.views) for (const m of Object.keys(view.heatmaps)) present.add(m);
    return DATA.methods.filter((m) => present.has(m));
  }

  function showStudy(study) {
    const header = $("#study-header");
    header.replaceChildren();
    header.appendChild(el("h2", { id: "study-id" }, study.id));
    const chips = el("div", { className: "chips" });
    if (study.group) chips.appendChild(chip(study.group, "group"));
    chips.appendChild(chip("label: " + study.label));
    chips.appendChild(chip("decision: " + study.decision, study.correct ? "ok" : "err"));
    chips.appendChild(chip("p = " + formatNumber(study.prob)));
    if (hasSets) chips.appendChild(chip("set " + formatSet(study.set)));
    if (study.referred) chips.appendChild(chip("referred", "flag"));
    chips.appendChild(chip(study.correct ? "\u2713 right" : "\u2717 wrong", study.correct ? "ok" : "err"));
    header.appendChild(chips);

    const methods = studyMethods(study);
    if (methods.length && !methods.includes(state.method)) state.method = methods[0];
    const fieldset = $("#method");
    fieldset.replaceChildren(el("legend", {}, "Heatmap"));
    for (const method of methods) {
      const input = el("input", { type: "radio", name: "method", value: method });
      input.checked = method === state.method;
      input.addEventListener("change", () => {
        state.method = method;
        updateOverlays();
      });
      const label = el("label", { className: "method" });
      label.append(input, " " + method);
      fieldset.appendChild(label);
    }
    $("#view-controls").hidden = methods.length === 0;

    const views = $("#views");
    const fragment = document.createDocumentFragment();
    study.views.forEach((view) => {
      const card = el("div", { className: "view" });
      card.appendChild(el("h3", {}, view.name));
      const pair = el("div", { className: "pair" });
      const size = { width: String(view.width), height: String(view.height) };
      const original = el("figure", { className: "original" });
      original.appendChild(el("img", { ...size, alt: view.name, src: view.thumb, className: "thumb" }));
      original.appendChild(el("figcaption", {}, "original"));
      pair.appendChild(original);
      if (methods.length) {
        const overlay = el("figure", { className: "overlay-figure" });
        const stack = el("div", { className: "overlay" });
        stack.appendChild(el("img", { ...size, alt: "", src: view.thumb, className: "base" }));
        overlay.appendChild(stack);
        overlay.appendChild(el("figcaption"));
        pair.appendChild(overlay);
        card.dataset.view = String(study.views.indexOf(view));
      }
      card.appendChild(pair);
      fragment.appendChild(card);
    });
    if (!study.views.length) fragment.appendChild(el("p", { className: "empty" }, "No images for this study."));
    views.replaceChildren(fragment);
    updateOverlays();
  }

  function updateOverlays() {
    if (state.selected < 0) return;
    const study = studies[state.selected];
    for (const card of document.querySelectorAll("#views .view[data-view]")) {
      const view = study.views[Number(card.dataset.view)];
      const stack = card.querySelector(".overlay");
      const caption = card.querySelector(".overlay-figure figcaption");
      const src = view.heatmaps[state.method];
      let heat = stack.querySelector("img.heat");
      if (src) {
        if (!heat) {
          heat = el("img", { alt: state.method + " heatmap", className: "heat",
            width: String(view.width), height: String(view.height) });
          stack.appendChild(heat);
        }
        heat.setAttribute("src", src);
        heat.setAttribute("alt", state.method + " heatmap");
        caption.textContent = state.method;
      } else {
        if (heat) heat.remove();
        caption.textContent = "no " + state.method + " heatmap";
      }
    }
  }

  function setOpacity() {
    const value = Number($("#opacity").value);
    state.opacity = value / 100;
    $("#views").style.setProperty("--heat-opacity", String(state.opacity));
    $("#opacity-value").textContent = value + "%";
  }

  // ---- tabs and summary ----
  function showTab(name) {
    const study = name === "study" && state.selected >= 0;
    $("#study-panel").hidden = !study;
    $("#summary").hidden = study;
    $("#tab-study").setAttribute("aria-selected", String(study));
    $("#tab-summary").setAttribute("aria-selected", String(!study));
  }

  function buildSummary() {
    const summary = DATA.summary;
    const metrics = $("#metrics tbody");
    for (const metric of summary.metrics) {
      const tr = el("tr");
      tr.appendChild(el("td", {}, metric.name));
      tr.appendChild(el("td", { className: "num" }, formatNumber(metric.value)));
      const ci = metric.ci ? "[" + formatNumber(metric.ci[0]) + ", " + formatNumber(metric.ci[1]) + "]" : "\u2014";
      tr.appendChild(el("td", { className: "num" }, ci));
      metrics.appendChild(tr);
    }
    if (!summary.metrics.length) $("#metrics").hidden = true;
    const notes = $("#notes");
    for (const note of summary.notes) notes.appendChild(el("li", {}, note));
    const plots = $("#plots");
    for (const plot of summary.plots) {
      const figure = el("figure", { className: "plot" });
      figure.appendChild(el("img", { src: plot.src, alt: plot.caption }));
      figure.appendChild(el("figcaption", {}, plot.caption));
      plots.appendChild(figure);
    }
  }

  function onKey(event) {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    const target = event.target;
    if (target.closest && target.closest("select, textarea, input[type=range], input[type=text]")) {
      return;
    }
    if (target.type === "radio") return;
    event.preventDefault();
    move(event.key === "ArrowDown" ? 1 : -1);
  }

  function init() {
    document.title = DATA.summary.title;
    $("#title").textContent = DATA.summary.title;
    buildHeader();
    buildRows();
    buildFilters();
    buildSummary();
    applySort();
    applyFilters();
    setOpacity();
    $("#opacity").addEventListener("input", setOpacity);
    $("#tab-study").addEventListener("click", () => showTab("study"));
    $("#tab-summary").addEventListener("click", () => showTab("summary"));
    document.addEventListener("keydown", onKey);
    showTab("summary");
    document.body.dataset.ready = "true";
  }

  init();
})();
