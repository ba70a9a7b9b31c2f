// A list read page by page with keyset cursors: the jobs, workflows and schedules lists.

import {api} from "./api.js";
import {fill, h} from "./dom.js";

/**
 * A paged list of ``path``'s items (25 a page) with ``query``'s filters: ``rows`` (the table's
 * body, one ``row(item)`` each, or ``empty`` across ``columns`` cells), ``pager`` (Previous,
 * "page N · n <noun>", Next) and ``load()``, which reads the page shown again (live updates
 * call it). A failure shows in ``error``; ``onPage(items)`` runs after each page is shown.
 */
export function pagedList({path, query = {}, row, columns, empty, noun, error, onPage}) {
  const cursors = [];  // the cursors of the pages before this one (for "Previous")
  let cursor = null;
  let nextCursor = null;

  const rows = h("tbody");
  const info = h("span", {class: "muted", id: "page-info"});
  const prev = h("button", {type: "button", id: "prev-page", onclick: () => {
    cursor = cursors.pop() ?? null;
    load();
  }}, "← Previous");
  const next = h("button", {type: "button", id: "next-page", onclick: () => {
    cursors.push(cursor);
    cursor = nextCursor;
    load();
  }}, "Next →");

  async function load() {
    try {
      const page = await api(path, {query: {...query, limit: 25, cursor}});
      fill(error);
      nextCursor = page.next_cursor;
      fill(rows, page.items.length ? page.items.map(row) : h("tr", {}, h("td", {colspan: columns, class: "muted"}, empty)));
      prev.disabled = cursors.length === 0;
      next.disabled = !nextCursor;
      fill(info, `page ${cursors.length + 1} · ${page.items.length} ${noun}`);
      if (onPage) onPage(page.items);
    } catch (failure) {
      fill(error, failure.message);
    }
  }

  return {rows, pager: h("div", {class: "pager"}, prev, info, next), load};
}
