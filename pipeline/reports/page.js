// report.html's tables: a click on a heading sorts by that column (numbers by value, labels with their numbers in
// order: step_300 before step_1200), the box above filters the rows by every word typed (a model, a dataset, ...),
// and a table longer than its `data-rows` is shown a page at a time. Hand-written rather than a table library: the
// page must stay one file that works offline (mailed, or opened from MLflow's artifact view), and every row is in
// the HTML, so with scripts off the table is simply shown whole.
(function () {
  "use strict";
  var NUMBER = /^[-+\u2212]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?/i;

  function sortKey(cell) {
    var text = cell ? cell.textContent.trim() : "";
    var number = NUMBER.exec(text.replace("\u2212", "-"));
    if (number) return [0, parseFloat(number[0]), text];
    return [text === "" ? 2 : 1, 0, text];  // empty cells last, whichever the direction
  }

  function compareKeys(a, b) {
    if (a[0] !== b[0]) return a[0] - b[0];
    if (a[0] === 0 && a[1] !== b[1]) return a[1] - b[1];
    return a[2].localeCompare(b[2], undefined, {numeric: true});
  }

  function button(label) {
    var made = document.createElement("button");
    made.type = "button";
    made.textContent = label;
    return made;
  }

  function enhance(table) {
    var body = table.tBodies[0];
    if (!body || !table.tHead) return;
    var rows = Array.prototype.slice.call(body.rows);
    var size = parseInt(table.getAttribute("data-rows") || "15", 10);
    var page = 0, words = [], matching = rows;
    var bar = document.createElement("div");
    bar.className = "controls";
    var filter = document.createElement("input");
    filter.type = "search";
    filter.placeholder = "filter rows: model, dataset, \u2026";
    filter.setAttribute("aria-label", "filter the rows of this table");
    var info = document.createElement("span");
    var previous = button("\u2039 previous"), next = button("next \u203a");
    bar.appendChild(filter);
    bar.appendChild(info);
    if (rows.length > size) {
      bar.appendChild(previous);
      bar.appendChild(next);
    }
    var holder = table.parentNode.classList.contains("scroll") ? table.parentNode : table;
    holder.parentNode.insertBefore(bar, holder);

    function show() {
      var pages = Math.max(1, Math.ceil(matching.length / size));
      page = Math.min(Math.max(page, 0), pages - 1);
      var first = page * size, shown = matching.slice(first, first + size);
      while (body.firstChild) body.removeChild(body.firstChild);
      shown.forEach(function (row) { body.appendChild(row); });
      var all = matching.length < rows.length ? " (" + rows.length + " in all)" : "";
      info.textContent = matching.length === 0 ? "no row matches" :
        "rows " + (first + 1) + "\u2013" + (first + shown.length) + " of " + matching.length + all;
      previous.disabled = page === 0;
      next.disabled = page >= pages - 1;
    }

    function refilter() {
      matching = rows.filter(function (row) {
        var text = row.textContent.toLowerCase();
        return words.every(function (word) { return text.indexOf(word) >= 0; });
      });
    }

    filter.addEventListener("input", function () {
      words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
      refilter();
      page = 0;
      show();
    });
    previous.addEventListener("click", function () { page -= 1; show(); });
    next.addEventListener("click", function () { page += 1; show(); });

    var headings = Array.prototype.slice.call(table.tHead.rows[0].cells);
    headings.forEach(function (heading, column) {
      heading.tabIndex = 0;
      heading.title = "sort by " + heading.textContent.trim();
      function sort() {
        var ascending = heading.getAttribute("aria-sort") !== "ascending";
        headings.forEach(function (other) { other.removeAttribute("aria-sort"); });
        heading.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var keyed = rows.map(function (row, index) { return [sortKey(row.cells[column]), index, row]; });
        keyed.sort(function (a, b) {
          var order = compareKeys(a[0], b[0]);
          if (order !== 0 && a[0][0] === b[0][0]) order = ascending ? order : -order;
          return order || a[1] - b[1];
        });
        rows = keyed.map(function (entry) { return entry[2]; });
        refilter();
        show();
      }
      heading.addEventListener("click", sort);
      heading.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sort(); }
      });
    });
    show();
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.data"), enhance);
})();
