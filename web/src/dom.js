// DOM helpers that only ever create text nodes from data: service names, endpoints, errors and
// model output come from the chain or from workers, and none of them is trusted, so nothing is
// ever assigned to innerHTML.

/** `el('td', {className: 'x', onclick}, 'text', child, ...)`. Strings become text nodes. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props ?? {})) {
    if (k === 'innerHTML' || k === 'outerHTML') throw new Error('no HTML from data');
    if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k === 'attrs') for (const [a, val] of Object.entries(v)) node.setAttribute(a, val);
    else node[k] = v;
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace the children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export const $ = (sel, root = document) => root.querySelector(sel);

/** A table whose columns sort on click and whose rows filter by a text box.
 *  columns: [{key, label, sort?: (row) => comparable, render?: (row) => Node|string}] */
export function sortableTable(columns, { filterPlaceholder = 'filter', id } = {}) {
  let rows = [];
  let sortKey = null;
  let asc = true;
  const filter = el('input', { type: 'search', placeholder: filterPlaceholder, className: 'filter' });
  const tbody = el('tbody');
  const headCells = columns.map((c) => el('th', {
    className: 'sortable',
    onclick: () => {
      asc = sortKey === c.key ? !asc : true;
      sortKey = c.key;
      draw();
    },
  }, c.label));
  const table = el('table', { id }, el('thead', {}, el('tr', {}, headCells)), tbody);
  const text = (row) => columns.map((c) => String(c.text ? c.text(row) : row[c.key] ?? '')).join(' ').toLowerCase();
  function draw() {
    const q = filter.value.trim().toLowerCase();
    let shown = q ? rows.filter((r) => text(r).includes(q)) : rows.slice();
    if (sortKey) {
      const c = columns.find((x) => x.key === sortKey);
      const v = c.sort ?? ((r) => r[c.key]);
      shown.sort((a, b) => {
        const x = v(a); const y = v(b);
        const d = x < y ? -1 : x > y ? 1 : 0;
        return asc ? d : -d;
      });
    }
    headCells.forEach((h, i) => h.classList.toggle('sorted', columns[i].key === sortKey));
    fill(tbody, shown.map((r) => el('tr', {}, columns.map((c) =>
      el('td', { className: c.className ?? '' }, c.render ? c.render(r) : String(r[c.key] ?? ''))))));
    if (!shown.length) tbody.append(el('tr', {}, el('td', { colSpan: columns.length, className: 'empty' }, 'nothing yet')));
  }
  filter.addEventListener('input', draw);
  draw();
  return {
    node: el('div', { className: 'table-wrap' }, filter, table),
    set(newRows) {
      rows = newRows;
      draw();
    },
  };
}
