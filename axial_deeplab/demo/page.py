"""The demo page: one self-contained HTML document (no external scripts, fonts or styles)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>axial-deeplab demo</title>
<style>
 body { font: 15px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #f6f6f4; }
 header { background: #23395d; color: #fff; padding: 10px 18px; }
 header h1 { font-size: 19px; margin: 0; display: inline; } header span { opacity: .8; }
 main { display: grid; grid-template-columns: 300px 1fr; gap: 18px; padding: 16px 18px; }
 fieldset { border: 1px solid #ccc; background: #fff; margin: 0 0 12px; padding: 8px 12px; }
 legend { font-weight: 600; } label { display: block; margin: 6px 0; }
 input[type=range] { width: 100%; } output { font-weight: 600; float: right; }
 button { font-size: 15px; padding: 6px 18px; background: #23395d; color: #fff; border: 0;
          border-radius: 4px; cursor: pointer; } button:disabled { opacity: .5; }
 #status { margin: 8px 0; min-height: 1.4em; } #status.error { color: #b00020; }
 .pictures { display: flex; flex-wrap: wrap; gap: 10px; }
 figure { margin: 0; background: #fff; padding: 6px; border: 1px solid #ddd; }
 figure img { display: block; max-width: 100%; } figcaption { font-size: 13px; color: #555; }
 #overlay-fig { flex: 1 1 100%; } .pictures figure:not(#overlay-fig) { flex: 1 1 40%; max-width: 49%; } #overlay-fig img { max-height: 70vh; }
 .scroll { max-height: 420px; overflow-y: auto; display: inline-block; }
 table { border-collapse: collapse; background: #fff; margin-top: 12px; }
 th, td { border: 1px solid #ddd; padding: 3px 10px; text-align: left; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; }
 [hidden] { display: none !important; }
</style></head>
<body>
<header><h1>axial-deeplab</h1> <span>panoptic segmentation demo, runs locally</span></header>
<main>
<section>
 <fieldset><legend>Photo</legend>
  <label>Sample <select id="sample"></select></label>
  <label>or upload <input type="file" id="file" accept="image/*"></label>
  <button id="run">Segment</button>
 </fieldset>
 <fieldset id="settings"><legend>Post-processing</legend></fieldset>
 <fieldset><legend>Show</legend>
  <label><input type="checkbox" id="show-semantic" checked> semantic map</label>
  <label><input type="checkbox" id="show-centers" checked> centre heatmap</label>
  <label><input type="checkbox" id="show-offsets" checked> offsets</label>
 </fieldset>
</section>
<section>
 <div id="status">Loading...</div>
 <div class="pictures" id="pictures" hidden>
  <figure id="overlay-fig"><img id="overlay" alt="panoptic overlay">
   <figcaption>panoptic prediction: one colour per segment, class name and score</figcaption>
   <img id="legend" alt="legend"></figure>
  <figure id="semantic-fig"><img id="semantic" alt="semantic map"><figcaption>semantic map
   </figcaption></figure>
  <figure id="centers-fig"><img id="centers" alt="centre heatmap"><figcaption>centre heatmap
   (+ detected centres)</figcaption></figure>
  <figure id="offsets-fig"><img id="offsets" alt="offsets"><figcaption>offsets to instance
   centres (hue: direction, see the wheel)</figcaption></figure>
 </div>
 <div class="scroll"><table id="segments-table" hidden><thead><tr><th>#</th><th>class</th><th>kind</th>
  <th>area (px)</th><th>score</th></tr></thead><tbody id="segments"></tbody></table></div>
</section>
</main>
<script>
const $ = (id) => document.getElementById(id);
const SLIDERS = {threshold: ["centre threshold", 0.01], nms_kernel: ["NMS kernel (px)", 2],
                 top_k: ["top-k instances", 1], stuff_area: ["min stuff area (px)", 64]};
function status(text, error) { $("status").textContent = text;
  $("status").className = error ? "error" : ""; }
function applyToggles() {
  for (const k of ["semantic", "centers", "offsets"]) $(k + "-fig").hidden = !$("show-" + k).checked;
}
async function init() {
  const info = await (await fetch("/api/info")).json();
  for (const name of info.samples) $("sample").add(new Option(name, name));
  for (const [key, [title, step]] of Object.entries(SLIDERS)) {
    const [low, high] = info.limits[key], value = info.defaults[key];
    const max = key === "stuff_area" ? Math.max(8192, value * 2) : key === "top_k" ? 400 :
                key === "nms_kernel" ? 31 : high;
    const label = document.createElement("label");
    label.innerHTML = `${title} <output id="${key}-value">${value}</output>` +
      `<input type="range" id="${key}" min="${low}" max="${max}" step="${step}" value="${value}">`;
    $("settings").append(label);
    $(key).addEventListener("input", () => { $(key + "-value").textContent = $(key).value; });
    $(key).addEventListener("change", run);
  }
  for (const k of ["semantic", "centers", "offsets"]) $("show-" + k).addEventListener("change", applyToggles);
  $("run").addEventListener("click", run);
  $("file").addEventListener("change", () => { if ($("file").files.length) run(); });
  $("sample").addEventListener("change", () => { $("file").value = ""; run(); });
  status(`${info.classes.length} classes; pick a photo and press Segment.`);
}
async function run() {
  const query = new URLSearchParams();
  for (const key of Object.keys(SLIDERS)) query.set(key, $(key).value);
  let body = null;
  if ($("file").files.length) body = await $("file").files[0].arrayBuffer();
  else query.set("sample", $("sample").value);
  $("run").disabled = true; status("Segmenting...");
  try {
    const response = await fetch("/api/predict?" + query, {method: "POST", body});
    const result = await response.json();
    if (!response.ok) throw new Error(result.error);
    for (const k of ["overlay", "semantic", "centers", "offsets", "legend"]) $(k).src = result.pictures[k];
    const rows = result.segments.map((s, i) => `<tr><td class="num">${i + 1}</td><td>${s.class}` +
      `</td><td>${s.isthing ? "thing" : "stuff"}</td><td class="num">${s.area}</td>` +
      `<td class="num">${s.score.toFixed(3)}</td></tr>`);
    $("segments").innerHTML = rows.join("");
    $("segments-table").hidden = false; $("pictures").hidden = false; applyToggles();
    const t = result.timing_ms;
    status(`${result.source}: ${result.size[1]}x${result.size[0]} px, ${result.segments.length} ` +
      `segments; model + post-processing ${t.predict} ms, pictures ${t.draw} ms (CPU)`);
    document.body.dataset.runs = Number(document.body.dataset.runs || 0) + 1;
  } catch (error) { status("Error: " + error.message, true); }
  finally { $("run").disabled = false; }
}
init();
</script>
</body></html>
"""
