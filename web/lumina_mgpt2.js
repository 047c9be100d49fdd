// Lumina-mGPT 2.0 UI helpers. Nothing here is needed to run a workflow (API mode never loads it).
//  - an information panel on the sampler and the condition encoder: the canvas size and its token count, and
//    on the sampler the live statistics of a run (rows, tokens/s, tokens per forward with SJD, ETA) from the
//    "lumina_mgpt2.stats" websocket event, with the sampler's warning (e.g. a task the checkpoint was not
//    trained for);
//  - width/height snap to the 32-px grid.
// The panel is a DOM widget the node owns (node.addDOMWidget), so the classic canvas and Nodes 2.0 (Vue nodes,
// which never call onDrawForeground) both show it, inside the node, with long lines wrapped. It is not a
// workflow value: never serialized, never sent to the server.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const STATS_EVENT = "lumina_mgpt2.stats";
const SIZED_NODES = new Set(["LuminaMGPT2Sampler", "LuminaMGPT2ConditionEncoder"]);
const INFO = "lumina_mgpt2_info"; // the panel widget's name and type (a type no frontend has a component for)
const GRID = 32;       // sizes are counted in 32-px grid tokens
const FACTOR = 8;      // one image code per 8x8 pixels
const LINE = 16;       // px per panel line, before wrapping
const PAD = 4;         // px of padding inside the panel
const MARGIN = 4;      // px between the panel and the node's edges (classic canvas)

// The latest statistics per execution id ("3", or "12:3" inside a subgraph), for scripts and tests.
const registry = (window.LuminaMGPT2 = { stats: {}, received: 0 });

export function snap(value) {
  return Math.max(GRID, Math.round(value / GRID) * GRID);
}

// t2i is the only single-panel task; every other task stacks two panels of width x height.
export function canvasOf(width, height, task) {
  return task && task !== "t2i" ? [width, 2 * height] : [width, height];
}

export function sizeText(width, height, task) {
  const [w, h] = canvasOf(width, height, task);
  const cols = w / FACTOR, rows = h / FACTOR;
  const tokens = rows * (cols + 1) + 4; // codes, a row end per row, image start/end and two grid tokens
  return `canvas ${w}x${h}: ${rows}x${cols} codes, ${tokens} tokens`;
}

function seconds(s) {
  if (s == null) return "?";
  return s >= 90 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(s < 10 ? 1 : 0)} s`;
}

export function statsText(s) {
  const parts = [`rows ${s.rows}/${s.total}`, `${s.tokens_per_s.toFixed(1)} tok/s`];
  // only SJD sends it: plain decoding makes one code per forward by definition
  if (s.tokens_per_forward != null) parts.push(`${s.tokens_per_forward.toFixed(2)} tok/forward`);
  if (s.stopped) parts.push(`stopped after ${seconds(s.elapsed_s)}`); // the run ended early (error, Cancel)
  else parts.push(s.done ? `done in ${seconds(s.elapsed_s)}` : `ETA ${seconds(s.eta_s)}`);
  return parts.join(" | ");
}

// The sampler's warning first when there is one, then the statistics line.
export function statsLines(s) {
  return s.warning ? [`warning: ${s.warning}`, statsText(s)] : [statsText(s)];
}

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// What the panel shows: [kind, text] pairs, kind "size", "warning" or "stats".
function infoLines(node) {
  const lines = [];
  const width = widget(node, "width")?.value, height = widget(node, "height")?.value;
  if (width && height) lines.push(["size", sizeText(width, height, widget(node, "task")?.value)]);
  if (node.luminaStats) {
    for (const text of statsLines(node.luminaStats)) lines.push([text.startsWith("warning:") ? "warning" : "stats", text]);
  }
  return lines;
}

// A node by the id the server runs it under: "3" on the root graph, "12:3" for node 3 inside subgraph node 12.
export function nodeOfExecutionId(id) {
  let graph = app.rootGraph ?? app.graph, node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById?.(Number(part)) ?? null;
    if (!node) return null;
    graph = node.subgraph;
  }
  return node;
}

// ------------------------------------------------------------------------------------------ the panel
const STYLE = `
.lumina-mgpt2-info { box-sizing: border-box; padding: ${PAD}px 6px; overflow: hidden; font: 12px/${LINE}px sans-serif;
  color: var(--descrip-text, #999); white-space: normal; overflow-wrap: anywhere; user-select: text; }
.lumina-mgpt2-info > .lumina-mgpt2-stats { color: var(--input-text, #ddd); }
.lumina-mgpt2-info > .lumina-mgpt2-warning { color: #e8a33d; }
`;

function addStyle() {
  if (document.getElementById("lumina-mgpt2-style")) return;
  const style = document.createElement("style");
  style.id = "lumina-mgpt2-style";
  style.textContent = STYLE;
  document.head.append(style);
}

// The widget's height for the panel's lines as laid out now (wrapping included), with its padding and the
// margins the classic canvas takes off; before the element is laid out (not yet on screen), a line per entry.
function contentHeight(element, count) {
  const measured = [...element.children].reduce((sum, child) => sum + child.offsetHeight, 0);
  return (measured || count * LINE) + 2 * PAD + 2 * MARGIN;
}

// Classic canvas: the node grows (never shrinks) to fit the panel's lines. Nodes 2.0 lays the node out from its
// DOM, so nothing to do there.
function fitNode(node, element) {
  if (globalThis.LiteGraph?.vueNodesMode || element.closest("[data-node-id]") || !node.computeSize) return;
  const need = node.computeSize()[1];
  if (node.size[1] < need) node.setSize([node.size[0], need]);
  node.setDirtyCanvas?.(true, true);
}

function render(node) {
  const panel = node.luminaPanel;
  if (!panel) return;
  const lines = infoLines(node);
  node.luminaInfo = lines.map(([, text]) => text); // what the panel shows, for scripts and tests
  panel.element.dataset.node = String(node.id); // whose panel it is, for styles and tests
  const key = JSON.stringify(lines);
  if (key === panel.key) return;
  panel.key = key;
  panel.element.replaceChildren(...lines.map(([kind, text]) => {
    const line = document.createElement("div");
    line.className = `lumina-mgpt2-${kind}`;
    line.textContent = text;
    return line;
  }));
  panel.height = contentHeight(panel.element, lines.length);
  fitNode(node, panel.element);
}

function addPanel(node) {
  addStyle();
  const element = document.createElement("div");
  element.className = "lumina-mgpt2-info";
  const panel = { element, key: null, height: LINE + 2 * PAD + 2 * MARGIN, width: 0 };
  const height = () => panel.height;
  const info = node.addDOMWidget(INFO, INFO, element, {
    serialize: false,
    hideOnZoom: false,
    margin: MARGIN,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: height,
    getMaxHeight: height,
    // not an input: leave it out of the properties panel of frontends that have one
    surfaces: { canvas: "shown", vueNode: "shown", panel: "never" },
    // classic canvas, every frame: re-measure when the node's width (hence the wrapping) changed
    onDraw: () => {
      if (element.clientWidth === panel.width) return;
      panel.width = element.clientWidth;
      const measured = contentHeight(element, element.children.length);
      if (measured !== panel.height) {
        panel.height = measured;
        fitNode(node, element);
      }
    },
  });
  info.serialize = false; // no entry in widgets_values: saved workflows stay as they were
  // Every queue attempt, accepted or rejected: the last run's lines no longer describe this node.
  info.beforeQueued = () => clearStats(node);
  node.luminaPanel = panel;
  render(node);
}

const withStats = new Set(); // nodes whose panel shows statistics now

function showStats(node, stats) {
  node.luminaStats = stats;
  withStats.add(node);
  render(node);
}

function clearStats(node) {
  if (!node.luminaStats) return;
  delete node.luminaStats;
  withStats.delete(node);
  render(node);
}

// A run that ended without its final event (an error, Cancel): its ETA is no longer true.
function markStopped() {
  for (const node of withStats) {
    if (!node.luminaStats.done) showStats(node, { ...node.luminaStats, stopped: true, eta_s: null });
  }
}

// width/height snap to the grid; a new size or task clears the last run's lines (they describe another canvas).
function watchWidgets(node) {
  for (const name of ["width", "height", "task"]) {
    const target = widget(node, name);
    if (!target) continue;
    const callback = target.callback;
    target.callback = function (value, ...rest) {
      if (name !== "task") target.value = snap(value);
      clearStats(node);
      render(node);
      return callback?.call(this, target.value, ...rest);
    };
  }
}

Object.assign(registry, { snap, sizeText, statsText, statsLines, nodeOfExecutionId });

app.registerExtension({
  name: "lumina_mgpt2.ui",

  setup() {
    // a new run starts clean: no "done" line left over from another run (or another workflow tab)
    api.addEventListener("execution_start", () => {
      registry.stats = {};
      for (const node of [...withStats]) clearStats(node);
    });
    api.addEventListener("execution_error", markStopped);
    api.addEventListener("execution_interrupted", markStopped);
    api.addEventListener(STATS_EVENT, ({ detail }) => {
      registry.stats[String(detail.node)] = detail;
      registry.received += 1;
      const node = nodeOfExecutionId(detail.node);
      if (node?.luminaPanel) showStats(node, detail);
    });
  },

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!SIZED_NODES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      watchWidgets(this);
      addPanel(this); // last: after every input's widget, so widgets_values keep their positions
      return result;
    };
    // a loaded workflow sets widget values without callbacks: show its size
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      render(this);
      return result;
    };
  },
});
