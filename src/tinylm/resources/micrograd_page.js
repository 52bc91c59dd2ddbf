// The micrograd page: `tinylm micrograd`'s training, recomputed in the browser.
//
// Every number here is computed the way the Python run computes it (tinylm.rng,
// tinylm.micrograd.datasets, engine, nn and demo), in the same order and with
// the same float formulas, so the loss after each step matches metrics.jsonl.
// Only the last bits of Math.tanh/exp/log/cos may differ from the C library's.
"use strict";

// --- RNG: xorshift64* with 24-bit floats and Box-Muller, as tinylm.rng ----------

const MASK64 = (1n << 64n) - 1n;
const MULTIPLIER = 0x2545f4914f6cdd1dn;
const TINY = 1.0 / 16777216.0; // the smallest positive random(): log(0) is never taken

class RNG {
  constructor(seed) {
    this.state = BigInt(seed);
  }

  randomU32() {
    let s = this.state;
    s ^= s >> 12n;
    s ^= (s << 25n) & MASK64;
    s ^= s >> 27n;
    this.state = s;
    return Number(((s * MULTIPLIER) & MASK64) >> 32n);
  }

  // 24 random bits, so the float is exact (and exact in float32 too)
  random() {
    return Math.floor(this.randomU32() / 256) / 16777216.0;
  }

  uniform(a, b) {
    return a + (b - a) * this.random();
  }

  randn(n, mu, sigma) {
    const out = [];
    while (out.length < n) {
      const u1 = this.random();
      const u2 = this.random();
      const radius = Math.sqrt(-2.0 * Math.log(u1 > 0.0 ? u1 : TINY));
      const angle = 2.0 * Math.PI * u2;
      out.push(radius * Math.cos(angle) * sigma + mu);
      out.push(radius * Math.sin(angle) * sigma + mu);
    }
    return out.slice(0, n);
  }
}

// --- data: the 2D toy datasets and their 80/10/10 split, as datasets.py ---------

function split(points) {
  const n = points.length;
  const a = Math.floor((n * 8) / 10);
  const b = Math.floor((n * 9) / 10);
  return { train: points.slice(0, a), val: points.slice(a, b), test: points.slice(b) };
}

function dist(x, y, cx, cy) {
  const dx = x - cx;
  const dy = y - cy;
  return Math.sqrt(dx * dx + dy * dy);
}

function simple(n, rng) {
  const points = [];
  for (let i = 0; i < n; i++) {
    const x = rng.uniform(-2, 2);
    const y = rng.uniform(-2, 2);
    points.push({ x: [x, y], label: x < 0 ? 0 : y < 0 ? 1 : 2 });
  }
  return split(points);
}

function circles(n, rng, noise = 0.1) {
  const points = [];
  for (let i = 0; i < n; i++) {
    const label = i % 2;
    const radius = label === 0 ? 1.5 : 0.75;
    const angle = rng.uniform(0, 2 * Math.PI);
    const [dx, dy] = rng.randn(2, 0.0, noise);
    points.push({ x: [radius * Math.cos(angle) + dx, radius * Math.sin(angle) + dy], label });
  }
  return split(points);
}

function moons(n, rng, noise = 0.1) {
  const points = [];
  for (let i = 0; i < n; i++) {
    const label = i % 2;
    const t = rng.uniform(0, Math.PI);
    let x, y;
    if (label === 0) {
      x = Math.cos(t);
      y = Math.sin(t);
    } else {
      x = 1 - Math.cos(t);
      y = 0.5 - Math.sin(t);
    }
    const [dx, dy] = rng.randn(2, 0.0, noise);
    points.push({ x: [(x - 0.5 + dx) * 1.5, (y - 0.25 + dy) * 1.5], label });
  }
  return split(points);
}

function yinyangClass(x, y, rSmall, rBig) {
  const dRight = dist(x, y, 1.5 * rBig, rBig);
  const dLeft = dist(x, y, 0.5 * rBig, rBig);
  if (dRight < rSmall || dLeft < rSmall) return 2;
  const isYin =
    dRight <= rSmall || (rSmall < dLeft && dLeft <= 0.5 * rBig) || (y > rBig && dRight > 0.5 * rBig);
  return isYin ? 0 : 1;
}

function yinyang(n, rng, rSmall = 0.1, rBig = 0.5) {
  const points = [];
  for (let i = 0; i < n; i++) {
    const goal = i % 3;
    let x, y;
    // rejection sampling: x first, then y, until the point lies in the circle and has the class
    for (;;) {
      x = rng.uniform(0, 2 * rBig);
      y = rng.uniform(0, 2 * rBig);
      if (dist(x, y, rBig, rBig) <= rBig && yinyangClass(x, y, rSmall, rBig) === goal) break;
    }
    points.push({ x: [(x / rBig - 1) * 2, (y / rBig - 1) * 2], label: goal });
  }
  return split(points);
}

const DATASETS = { simple, circles, moons, yinyang };
const NUM_CLASSES = { simple: 3, circles: 2, moons: 2, yinyang: 3 };

// --- engine: Value, the ops the model uses, and backward, as engine.py ----------

class Value {
  constructor(data, parents = [], op = "", localGrads = []) {
    this.data = data;
    this.grad = 0.0;
    this.parents = parents; // localGrads[i] is d(data)/d(parents[i]) at this point
    this.op = op;
    this.localGrads = localGrads;
  }

  add(other) {
    if (other instanceof Value) {
      return new Value(this.data + other.data, [this, other], "+", [1.0, 1.0]);
    }
    return new Value(this.data + other, [this], "+", [1.0]);
  }

  // times a plain number: the number is a constant and gets no node of its own
  mulNumber(c) {
    return new Value(this.data * c, [this], "*", [c]);
  }

  tanh() {
    const t = Math.tanh(this.data);
    return new Value(t, [this], "tanh", [1.0 - t * t]);
  }

  // every node below this one, each after all its parents; the same depth-first
  // walk (explicit stack, parents in order) as engine.py, so gradients are
  // accumulated in the same order and round the same way
  topologicalOrder() {
    const order = [];
    const visited = new Set([this]);
    const stack = [[this, 0]];
    while (stack.length > 0) {
      const top = stack[stack.length - 1];
      const parents = top[0].parents;
      let descended = false;
      while (top[1] < parents.length) {
        const parent = parents[top[1]++];
        if (!visited.has(parent)) {
          visited.add(parent);
          stack.push([parent, 0]);
          descended = true;
          break;
        }
      }
      if (!descended) {
        stack.pop();
        order.push(top[0]);
      }
    }
    return order;
  }

  // leaves accumulate, every other node starts again from 0 (the zero-grad rule)
  backward() {
    const order = this.topologicalOrder();
    for (const node of order) if (node.parents.length > 0) node.grad = 0.0;
    this.grad += 1.0;
    for (let i = order.length - 1; i >= 0; i--) {
      const node = order[i];
      const g = node.grad;
      for (let j = 0; j < node.parents.length; j++) node.parents[j].grad += node.localGrads[j] * g;
    }
  }
}

// bias + sum(w * x), left to right, as one node (engine.weighted_sum)
function weightedSum(weights, inputs, bias) {
  const xs = inputs.map((v) => v.data);
  const ws = weights.map((v) => v.data);
  let total = bias.data;
  for (let i = 0; i < ws.length; i++) total += ws[i] * xs[i];
  return new Value(total, [bias, ...weights, ...inputs], "w·x+b", [1.0, ...xs, ...ws]);
}

// the exactly rounded sum of finite numbers, as Python's math.fsum: keep the
// running sum as non-overlapping partials, then round their total once
function fsum(xs) {
  const partials = [];
  for (let x of xs) {
    let i = 0;
    for (let y of partials) {
      if (Math.abs(x) < Math.abs(y)) [x, y] = [y, x];
      const hi = x + y;
      const lo = y - (hi - x);
      if (lo !== 0) partials[i++] = lo;
      x = hi;
    }
    partials.length = i;
    partials.push(x);
  }
  let n = partials.length;
  if (n === 0) return 0.0;
  let hi = partials[--n];
  let lo = 0;
  while (n > 0) {
    const x = hi;
    const y = partials[--n];
    hi = x + y;
    lo = y - (hi - x);
    if (lo !== 0) break;
  }
  // half-way case: round by the sign of the rest, not to even
  if (n > 0 && ((lo < 0 && partials[n - 1] < 0) || (lo > 0 && partials[n - 1] > 0))) {
    const y = lo * 2;
    const x = hi + y;
    if (y === x - hi) hi = x;
  }
  return hi;
}

// -log softmax(logits)[target] as one node, shifted by the max (nn.cross_entropy)
function crossEntropy(logits, target) {
  const m = Math.max(...logits.map((l) => l.data));
  const exps = logits.map((l) => Math.exp(l.data - m));
  const total = fsum(exps);
  const loss = Math.log(total) - (logits[target].data - m);
  const local = exps.map((e, i) => e / total - (i === target ? 1 : 0));
  return new Value(loss, logits.slice(), "cross_entropy", local);
}

// --- nn: MLP layers drawn in nn.py's order, and the demo's mean loss -------------

function makeLinear(nin, nout, rng) {
  const scale = nin ** -0.5;
  const weight = [];
  for (let j = 0; j < nout; j++) {
    const row = [];
    for (let k = 0; k < nin; k++) row.push(new Value(rng.uniform(-1, 1) * scale));
    weight.push(row);
  }
  const bias = [];
  for (let j = 0; j < nout; j++) bias.push(new Value(0.0));
  return { weight, bias };
}

// an MLP is its list of Linear layers; a tanh follows each one but the last
function makeMLP(nin, nouts, rng) {
  const sizes = [nin, ...nouts];
  return nouts.map((_, i) => makeLinear(sizes[i], sizes[i + 1], rng));
}

function parameters(model) {
  return model.flatMap((layer) => [...layer.weight.flat(), ...layer.bias]);
}

// the parameters' names, as the Python demo's graph: L<layer>N<neuron>.w<input> and .b
function parameterNames(model) {
  return model.flatMap((layer, i) => [
    ...layer.weight.flatMap((row, j) => row.map((_, k) => `L${i}N${j}.w${k}`)),
    ...layer.bias.map((_, j) => `L${i}N${j}.b`),
  ]);
}

// the outputs of every layer in turn (sums, then tanh, ...); the last are the logits
function layerOutputs(model, x) {
  let h = x.map((v) => (v instanceof Value ? v : new Value(v)));
  const outputs = [];
  model.forEach((layer, i) => {
    h = layer.weight.map((row, j) => weightedSum(row, h, layer.bias[j]));
    outputs.push(h);
    if (i < model.length - 1) {
      h = h.map((v) => v.tanh());
      outputs.push(h);
    }
  });
  return outputs;
}

function forward(model, x) {
  const outputs = layerOutputs(model, x);
  return outputs[outputs.length - 1];
}

// summed in order from 0, times 1/len (demo.mean_loss)
function meanLoss(model, points) {
  let total = 0.0;
  for (const p of points) {
    const ce = crossEntropy(forward(model, p.x), p.label);
    total = total instanceof Value ? total.add(ce) : ce.add(total);
  }
  return total.mulNumber(1.0 / points.length);
}

// the logits with plain numbers, no graph: for the surface and the accuracy
function logitsOf(model, x) {
  let h = x;
  model.forEach((layer, i) => {
    h = layer.weight.map((row, j) => {
      let total = layer.bias[j].data;
      for (let k = 0; k < row.length; k++) total += row[k].data * h[k];
      return total;
    });
    if (i < model.length - 1) h = h.map(Math.tanh);
  });
  return h;
}

function predict(model, x) {
  const logits = logitsOf(model, x);
  return logits.indexOf(Math.max(...logits)); // the first one on a tie
}

function plainMeanLoss(model, points) {
  let total = 0.0;
  for (const p of points) {
    const logits = logitsOf(model, p.x).map((l) => new Value(l));
    total += crossEntropy(logits, p.label).data;
  }
  return total * (1.0 / points.length);
}

// a copy of the model with fresh leaves, so tracing one point leaves the
// training gradients (shown in the table) alone
function cloneModel(model) {
  return model.map((layer) => ({
    weight: layer.weight.map((row) => row.map((w) => new Value(w.data))),
    bias: layer.bias.map((b) => new Value(b.data)),
  }));
}

// --- AdamW: torch.optim.AdamW's update, in nn.AdamW's order of operations -------

class AdamW {
  constructor(params, lr, betas, eps, weightDecay) {
    this.params = params;
    this.lr = lr;
    this.betas = betas;
    this.eps = eps;
    this.weightDecay = weightDecay;
    this.steps = 0;
    this.m = params.map(() => 0.0); // running mean of the gradient
    this.v = params.map(() => 0.0); // running mean of its square
  }

  zeroGrad() {
    for (const p of this.params) p.grad = 0.0;
  }

  step() {
    this.steps += 1;
    const [beta1, beta2] = this.betas;
    // the running means start at 0; dividing by 1 - beta**t removes that bias
    const stepSize = this.lr / (1 - beta1 ** this.steps);
    const correction2Sqrt = (1 - beta2 ** this.steps) ** 0.5;
    const decay = 1 - this.lr * this.weightDecay;
    const m = this.m;
    const v = this.v;
    this.params.forEach((p, i) => {
      const g = p.grad;
      p.data *= decay; // decoupled: the weights shrink directly, not through the gradient
      m[i] += (g - m[i]) * (1 - beta1);
      v[i] = v[i] * beta2 + (1 - beta2) * g * g;
      const denom = Math.sqrt(v[i]) / correction2Sqrt + this.eps;
      p.data -= (stepSize * m[i]) / denom;
    });
  }
}

// --- the run: one RNG for the data, then the weights; one step as demo.train -----

const configText = document.getElementById("config").textContent;
const config = JSON.parse(configText);
// JSON numbers are doubles: read the seed's digits themselves, it may exceed 2**53
const seedDigits = configText.match(/"seed":\s*(\d+)/)[1];

let run = null;

function newRun() {
  const rng = new RNG(seedDigits);
  const data = DATASETS[config.dataset](config.points, rng);
  const model = makeMLP(2, [...config.hidden, NUM_CLASSES[config.dataset]], rng);
  const params = parameters(model);
  const optimizer = new AdamW(params, config.lr, config.betas, config.eps, config.weight_decay);
  return {
    data, model, params, optimizer,
    names: parameterNames(model),
    step: 0,
    losses: [],
    val: null, // [step, loss], measured before steps 1, 1 + eval_every, ...
    traced: { x: data.test[0].x, label: data.test[0].label, what: "test point 0" },
  };
}

function trainStep() {
  if (run.step >= config.steps) return;
  if (run.step % config.eval_every === 0) {
    run.val = [run.step + 1, plainMeanLoss(run.model, run.data.val)];
  }
  const loss = meanLoss(run.model, run.data.train);
  run.optimizer.zeroGrad();
  loss.backward();
  run.optimizer.step();
  run.step += 1;
  run.losses.push(loss.data);
  document.getElementById("trace").textContent += `${run.step} ${String(loss.data)}\n`;
}

// --- drawing: the graph of the traced point, as SVG ---------------------------

const SVG_NS = "http://www.w3.org/2000/svg";
const BOX_W = 92;
const BOX_H = 40;
const COL = BOX_W + 14;
const ROW = BOX_H + 6;

function svgElement(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function fmt(x) {
  if (x === 0 || !Number.isFinite(x)) return String(x);
  return Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4 ? x.toFixed(4) : x.toExponential(2);
}

// the graph of one forward and backward pass on the traced point, laid out by
// the model's structure: inputs, then per layer a block of each neuron's
// parameters, its sum and its tanh, then the loss
function layoutGraph(model, point) {
  const inputs = point.x.map((v) => new Value(v));
  const copy = cloneModel(model);
  const outputs = layerOutputs(copy, inputs);
  const loss = crossEntropy(outputs[outputs.length - 1], point.label);
  loss.backward();

  // groups of columns, left to right, each with its own rows: place(col0, top) fills boxes
  const boxes = new Map(); // node -> {col, row, title, kind}
  const groups = [{
    rows: inputs.length, width: 1,
    place: (col0, top) => inputs.forEach((v, r) =>
      boxes.set(v, { col: col0, row: top + r, title: r === 0 ? "x" : "y", kind: "input" })),
  }];
  copy.forEach((layer, i) => {
    const nParams = layer.weight[0].length + 1;
    const perRow = Math.min(nParams, Math.max(3, Math.ceil(Math.sqrt(nParams))));
    const band = Math.ceil(nParams / perRow); // rows per neuron
    const sums = outputs[2 * i];
    const tanhs = i < copy.length - 1 ? outputs[2 * i + 1] : null;
    groups.push({
      rows: band * layer.weight.length,
      width: perRow + 1 + (tanhs ? 1 : 0),
      place: (col0, top) => layer.weight.forEach((row, j) => {
        [...row, layer.bias[j]].forEach((w, k) => boxes.set(w, {
          col: col0 + (k % perRow), row: top + j * band + Math.floor(k / perRow),
          title: k < row.length ? `L${i}N${j}.w${k}` : `L${i}N${j}.b`, kind: "param",
        }));
        const mid = top + j * band + (band - 1) / 2;
        boxes.set(sums[j], { col: col0 + perRow, row: mid, title: sums[j].op, kind: "op" });
        if (tanhs) boxes.set(tanhs[j], { col: col0 + perRow + 1, row: mid, title: "tanh", kind: "op" });
      }),
    });
  });
  groups.push({
    rows: 1, width: 1,
    place: (col0, top) =>
      boxes.set(loss, { col: col0, row: top, title: `loss (class ${point.label})`, kind: "loss" }),
  });

  // each group centred vertically on the tallest
  const height = Math.max(...groups.map((g) => g.rows));
  let col = 0;
  for (const g of groups) {
    g.place(col, (height - g.rows) / 2);
    col += g.width;
  }
  return { loss, boxes, cols: col, rows: height };
}

function drawGraph() {
  const { loss, boxes, cols, rows } = layoutGraph(run.model, run.traced);
  const pad = 6;
  const width = cols * COL - (COL - BOX_W) + 2 * pad;
  const height = rows * ROW - (ROW - BOX_H) + 2 * pad;
  const svg = svgElement("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  const at = (box) => [pad + box.col * COL, pad + box.row * ROW];

  // edges first, so the boxes cover their ends
  const edges = svgElement("g", { class: "edges" });
  for (const [node, box] of boxes) {
    const [x1, y1] = at(box);
    for (const parent of node.parents) {
      const [x0, y0] = at(boxes.get(parent));
      edges.appendChild(svgElement("line", {
        x1: x0 + BOX_W, y1: y0 + BOX_H / 2, x2: x1, y2: y1 + BOX_H / 2,
      }));
    }
  }
  svg.appendChild(edges);

  for (const [node, box] of boxes) {
    const [x, y] = at(box);
    const g = svgElement("g", { class: `node ${box.kind}`, transform: `translate(${x},${y})` });
    g.appendChild(svgElement("rect", { width: BOX_W, height: BOX_H, rx: 4 }));
    g.appendChild(svgElement("text", { x: 5, y: 12, class: "title" }, box.title));
    g.appendChild(svgElement("text", { x: 5, y: 24 }, `data ${fmt(node.data)}`));
    g.appendChild(svgElement("text", { x: 5, y: 35 }, `grad ${fmt(node.grad)}`));
    svg.appendChild(g);
  }
  const container = document.getElementById("graph");
  container.replaceChildren(svg);
  const [px, py] = run.traced.x;
  document.getElementById("traced").textContent =
    `traced: ${run.traced.what} at (${px.toFixed(4)}, ${py.toFixed(4)}), class ${run.traced.label}, ` +
    `loss ${fmt(loss.data)}, ${boxes.size} nodes`;
}

// --- drawing: the decision surface, the points and the loss curve ---------------

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
const CELL = 6; // pixels per cell of the surface

function splits() {
  return [["train", run.data.train], ["val", run.data.val], ["test", run.data.test]];
}

// a square view of the data with a margin, the same for both axes
function view() {
  const all = [...run.data.train, ...run.data.val, ...run.data.test].flatMap((p) => p.x);
  const lo = Math.min(...all) - 0.25;
  const hi = Math.max(...all) + 0.25;
  const canvas = document.getElementById("surface");
  const size = canvas.width;
  return {
    size,
    toPixel: ([x, y]) => [((x - lo) / (hi - lo)) * size, size - ((y - lo) / (hi - lo)) * size],
    toData: (px, py) => [lo + (px / size) * (hi - lo), lo + ((size - py) / size) * (hi - lo)],
  };
}

function drawSurface() {
  const canvas = document.getElementById("surface");
  const ctx = canvas.getContext("2d");
  const v = view();
  ctx.clearRect(0, 0, v.size, v.size);
  ctx.globalAlpha = 0.3;
  for (let py = 0; py < v.size; py += CELL) {
    for (let px = 0; px < v.size; px += CELL) {
      ctx.fillStyle = COLORS[predict(run.model, v.toData(px + CELL / 2, py + CELL / 2))];
      ctx.fillRect(px, py, CELL, CELL);
    }
  }
  ctx.globalAlpha = 1;
  // dots: train; rings: val; crosses: test
  for (const [kind, points] of splits()) {
    for (const p of points) {
      const [x, y] = v.toPixel(p.x);
      ctx.strokeStyle = ctx.fillStyle = COLORS[p.label];
      ctx.lineWidth = 2;
      ctx.beginPath();
      if (kind === "test") {
        ctx.moveTo(x - 4, y - 4); ctx.lineTo(x + 4, y + 4);
        ctx.moveTo(x - 4, y + 4); ctx.lineTo(x + 4, y - 4);
        ctx.stroke();
      } else {
        ctx.arc(x, y, 3.5, 0, 2 * Math.PI);
        kind === "train" ? ctx.fill() : ctx.stroke();
      }
    }
  }
  const [tx, ty] = v.toPixel(run.traced.x);
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  ctx.arc(tx, ty, 8, 0, 2 * Math.PI);
  ctx.stroke();
}

function drawLossCurve() {
  const canvas = document.getElementById("losscurve");
  const ctx = canvas.getContext("2d");
  const w = canvas.width;
  const h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#ccc";
  ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
  if (run.losses.length === 0) return;
  const top = Math.max(...run.losses);
  ctx.strokeStyle = "#1f77b4";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  run.losses.forEach((loss, i) => {
    const x = 4 + ((w - 8) * (i + 1)) / config.steps;
    const y = h - 4 - ((h - 8) * loss) / top;
    i === 0 ? ctx.moveTo(x, y) : ctx.lineTo(x, y);
  });
  ctx.stroke();
}

// --- drawing: the parameter table ---------------------------------------------

function buildParamsTable() {
  const body = document.querySelector("#params tbody");
  body.replaceChildren(...run.names.map((name) => {
    const tr = document.createElement("tr");
    for (const text of [name, "", "", "", ""]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function fillParamsTable() {
  const rows = document.querySelectorAll("#params tbody tr");
  const opt = run.optimizer;
  run.params.forEach((p, i) => {
    const cells = rows[i].children;
    cells[1].textContent = fmt(p.data);
    cells[2].textContent = fmt(p.grad);
    cells[3].textContent = fmt(opt.m[i]);
    cells[4].textContent = fmt(opt.v[i]);
  });
}

function showStatus() {
  const last = run.losses.length ? `, loss ${String(run.losses[run.losses.length - 1])}` : "";
  let text = `step ${run.step} / ${config.steps}${last}`;
  if (run.val) text += `; val loss ${fmt(run.val[1])} (before step ${run.val[0]})`;
  if (run.step === config.steps) {
    const test = run.data.test;
    const right = test.filter((p) => predict(run.model, p.x) === p.label).length;
    text += `; test accuracy ${((100 * right) / test.length).toFixed(1)}%`;
  }
  document.getElementById("status").textContent = text;
}

// everything: after a step, a click, a reset, a pause
function redraw() {
  showStatus();
  drawLossCurve();
  fillParamsTable();
  drawSurface();
  drawGraph();
}

// --- controls: play, pause, step, reset, and the click that picks a point ---------

const REDRAW_EVERY = 5; // while playing, the heavy pictures only every few steps
const TICK_MS = 20;
let timer = null;

function setPlaying(playing) {
  if (timer !== null) clearTimeout(timer);
  timer = null;
  if (playing && run.step < config.steps) timer = setTimeout(tick, TICK_MS);
  document.getElementById("play").disabled = playing || run.step >= config.steps;
  document.getElementById("pause").disabled = !playing || run.step >= config.steps;
  document.getElementById("step").disabled = run.step >= config.steps;
}

function tick() {
  trainStep();
  const done = run.step >= config.steps;
  if (done || run.step % REDRAW_EVERY === 0) {
    redraw();
  } else {
    showStatus();
    drawLossCurve();
  }
  setPlaying(!done);
}

function reset() {
  run = newRun();
  window.tinylmLosses = run.losses;
  document.getElementById("trace").textContent = "";
  buildParamsTable();
  setPlaying(false);
  redraw();
}

function pickPoint(event) {
  const canvas = event.currentTarget;
  const rect = canvas.getBoundingClientRect();
  const px = ((event.clientX - rect.left) * canvas.width) / rect.width;
  const py = ((event.clientY - rect.top) * canvas.height) / rect.height;
  const v = view();
  // the nearest data point within a few pixels, else the clicked place as a new input
  let best = null;
  let bestDist = 8;
  for (const [kind, points] of splits()) {
    points.forEach((p, i) => {
      const [x, y] = v.toPixel(p.x);
      const d = Math.hypot(x - px, y - py);
      if (d <= bestDist) {
        best = { x: p.x, label: p.label, what: `${kind} point ${i}` };
        bestDist = d;
      }
    });
  }
  if (best === null) {
    const x = v.toData(px, py);
    // a new input has no true class: score it against the model's own guess
    best = { x, label: predict(run.model, x), what: "new point (class = the model's guess)" };
  }
  run.traced = best;
  drawSurface();
  drawGraph();
}

document.getElementById("play").addEventListener("click", () => setPlaying(true));
document.getElementById("pause").addEventListener("click", () => { setPlaying(false); redraw(); });
document.getElementById("step").addEventListener("click", () => {
  setPlaying(false);
  trainStep();
  setPlaying(false); // again: after the last step, play and step are disabled
  redraw();
});
document.getElementById("reset").addEventListener("click", reset);
document.getElementById("surface").addEventListener("click", pickPoint);
reset();
