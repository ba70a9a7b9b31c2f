// A workflow's task graph as positions, without the DOM: tasks in layers by their longest path
// from the roots (left to right), each layer ordered to keep edges short, then boxes on a grid.

export const NODE = {width: 180, height: 62, gapX: 70, gapY: 22, pad: 12};

/** The layer of each task: 0 for a root, else one more than its deepest dependency. */
export function layers(tasks) {
  const byKey = new Map(tasks.map((task) => [task.key, task]));
  const depth = new Map();
  const visiting = new Set();
  const visit = (key) => {
    if (depth.has(key)) return depth.get(key);
    // The API refuses cycles; should one come anyway, the edge that closes it counts as a root's.
    if (visiting.has(key)) return -1;
    visiting.add(key);
    let deepest = -1;
    for (const dep of byKey.get(key).depends_on || []) {
      if (byKey.has(dep)) deepest = Math.max(deepest, visit(dep));
    }
    visiting.delete(key);
    depth.set(key, deepest + 1);
    return deepest + 1;
  };
  for (const task of tasks) visit(task.key);
  return depth;
}

/**
 * Boxes and edges for ``tasks`` ([{key, depends_on}], in creation order): {nodes: Map key →
 * {task, layer, row, x, y}, edges: [{from, to, points}] (dependency → dependent; ``points``
 * [[x, y], …]: out of the dependency's right side, through a free slot of each layer it crosses,
 * into the dependent's left side), width, height}.
 */
export function layout(tasks, size = NODE) {
  const depth = layers(tasks);
  const columns = [];
  const place = (layer, item) => (columns[layer] ||= []).push(item);
  tasks.forEach((task, index) => place(depth.get(task.key), {id: task.key, task, index, after: task.depends_on || []}));
  // An edge that skips layers gets a slot in each layer between (a "dummy" node, as in the
  // Sugiyama method), so it never runs through another box.
  const edges = [];
  for (const task of tasks) {
    for (const dep of task.depends_on || []) {
      if (!depth.has(dep)) continue;
      const via = [];
      let before = dep;
      for (let layer = depth.get(dep) + 1; layer < depth.get(task.key); layer += 1) {
        const id = `${dep}\u0000${task.key}\u0000${layer}`;
        place(layer, {id, index: Number.MAX_SAFE_INTEGER, after: [before]});
        via.push(id);
        before = id;
      }
      edges.push({from: dep, to: task.key, via});
    }
  }
  // Each layer in the mean row of what it follows (the barycenter heuristic: fewer
  // crossings), ties in creation order, so the same workflow always looks the same.
  const rowOf = new Map();
  for (const column of columns) {
    if (!column) continue;
    const weight = (item) => {
      const rows = item.after.filter((id) => rowOf.has(id)).map((id) => rowOf.get(id));
      return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : item.index;
    };
    const weights = new Map(column.map((item) => [item, weight(item)]));
    column.sort((a, b) => weights.get(a) - weights.get(b) || a.index - b.index);
    column.forEach((item, row) => rowOf.set(item.id, row));
  }
  const tallest = Math.max(0, ...columns.map((column) => (column ? column.length : 0)));
  const stepX = size.width + size.gapX;
  const stepY = size.height + size.gapY;
  const slots = new Map();
  columns.forEach((column, layer) => {
    if (!column) return;
    const offset = ((tallest - column.length) * stepY) / 2;  // each layer centred vertically
    column.forEach((item, row) => slots.set(item.id, {
      task: item.task, layer, row, x: size.pad + layer * stepX, y: size.pad + offset + row * stepY,
    }));
  });
  const nodes = new Map(tasks.map((task) => [task.key, slots.get(task.key)]));
  const middle = (slot) => slot.y + size.height / 2;
  for (const edge of edges) {
    const a = nodes.get(edge.from);
    const b = nodes.get(edge.to);
    edge.points = [[a.x + size.width, middle(a)]];
    for (const id of edge.via) {
      const slot = slots.get(id);
      edge.points.push([slot.x, middle(slot)], [slot.x + size.width, middle(slot)]);
    }
    edge.points.push([b.x, middle(b)]);
    delete edge.via;
  }
  return {
    nodes, edges,
    width: 2 * size.pad + Math.max(1, columns.length) * stepX - size.gapX,
    height: 2 * size.pad + Math.max(1, tallest) * stepY - size.gapY,
  };
}

/** An SVG path through ``points``: curves across the gaps between layers (leaving and
 * entering level), straight lines through the layers an edge crosses. */
export function pathOf(points) {
  const [[x0, y0], ...rest] = points;
  let d = `M ${x0} ${y0}`;
  rest.forEach(([x, y], i) => {
    const [px, py] = points[i];
    if (i % 2 === 0) {
      const bend = (x - px) / 2;
      d += ` C ${px + bend} ${py}, ${x - bend} ${y}, ${x} ${y}`;
    } else {
      d += ` L ${x} ${y}`;
    }
  });
  return d;
}

/** A task's run_if as a short phrase: null for "success" (the default), else "if failure",
 * "always", "if tasks.x.output.n gt 0". */
export function runIfText(runIf) {
  if (runIf === undefined || runIf === null || runIf === "success") return null;
  if (runIf === "failure") return "if failure";
  if (runIf === "always") return "always";
  if (typeof runIf === "object") {
    const unary = runIf.op === "exists" || runIf.op === "not_exists";
    return `if ${runIf.path} ${runIf.op}${unary ? "" : ` ${JSON.stringify(runIf.value)}`}`;
  }
  return `if ${runIf}`;
}
