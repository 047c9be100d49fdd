// Lumina-mGPT 2.0 UI helpers. Nothing here is needed to run a workflow (API mode never loads it).
//  - live statistics on the sampler while it runs (rows, tokens/s, tokens per forward with SJD, ETA), from
//    the "lumina_mgpt2.stats" websocket event the sampler sends, and its warning (e.g. a task the checkpoint
//    was not trained for);
//  - a size helper on the sampler and the condition encoder: width/height snap to the 32-px grid and the
//    node shows the canvas and its token count.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const STATS_EVENT = "lumina_mgpt2.stats";
const SIZED_NODES = new Set(["LuminaMGPT2Sampler", "LuminaMGPT2ConditionEncoder"]);
const GRID = 32;       // sizes are counted in 32-px grid tokens
const FACTOR = 8;      // one image code per 8x8 pixels
const LINE = 15;       // px per text line drawn above the node's title bar

// The latest statistics per node id, for scripts and tests: window.LuminaMGPT2.stats["3"].
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
  parts.push(s.done ? `done in ${seconds(s.elapsed_s)}` : `ETA ${seconds(s.eta_s)}`);
  return parts.join(" | ");
}

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

function infoLines(node) {
  const lines = [];
  const width = widgetValue(node, "width"), height = widgetValue(node, "height");
  if (width && height) lines.push(sizeText(width, height, widgetValue(node, "task")));
  const stats = registry.stats[String(node.id)];
  if (stats) lines.push(...statsLines(stats));
  return lines;
}

// The statistics line, and the sampler's warning above the node when there is one.
export function statsLines(s) {
  return s.warning ? [`warning: ${s.warning}`, statsText(s)] : [statsText(s)];
}

function snapSizeWidgets(node) {
  for (const name of ["width", "height"]) {
    const widget = node.widgets?.find((w) => w.name === name);
    if (!widget) continue;
    const callback = widget.callback;
    widget.callback = function (value, ...rest) {
      widget.value = snap(value);
      node.setDirtyCanvas(true, false);
      return callback?.call(this, widget.value, ...rest);
    };
  }
}

// Nodes inside a subgraph run under "outer:inner" ids; the canvas that shows them knows the inner id.
function localId(id) {
  return String(id).split(":").pop();
}

Object.assign(registry, { snap, sizeText, statsText, statsLines, localId });

app.registerExtension({
  name: "lumina_mgpt2.ui",

  setup() {
    // a new run starts clean: no "done" line left over from another run (or another workflow tab)
    api.addEventListener("execution_start", () => {
      registry.stats = {};
    });
    api.addEventListener(STATS_EVENT, ({ detail }) => {
      const id = localId(detail.node);
      registry.stats[id] = detail;
      registry.received += 1;
      const node = (app.canvas?.graph ?? app.graph)?.getNodeById(Number(id));
      if (node) {
        node.luminaStatsText = statsText(detail);
        node.setDirtyCanvas(true, false);
      }
    });
  },

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!SIZED_NODES.has(nodeData.name)) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      snapSizeWidgets(this);
      return result;
    };

    // Drawn above the title bar: the node body belongs to widgets and the sampler's preview image.
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      const lines = (this.luminaInfo = infoLines(this)); // kept on the node: what was last drawn
      const top = -(globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30) - 6;
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.textAlign = "left";
      lines.forEach((text, i) => {
        ctx.fillStyle = text.startsWith("warning:") ? "#fa4" : "#9ad";
        ctx.fillText(text, 4, top - (lines.length - 1 - i) * LINE);
      });
      ctx.restore();
    };
  },
});
