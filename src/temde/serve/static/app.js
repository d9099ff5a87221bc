"use strict";
// The page of `temde serve`. Everything it shows comes from this server's JSON API (/api/...); it loads nothing
// from any other origin. Text from the index (captions) is only ever set as textContent, never parsed as HTML.

const RESULTS = 24; // thumbnails per text search: four rows of a wide screen
const CAPTIONS = 10; // captions and similar images per image query
const $ = (id) => document.getElementById(id);
let config = null;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function ms(value) {
  return value === undefined ? "–" : `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
}

function timingText(timing, rerank) {
  const parts = [];
  if ("features" in timing) parts.push(`features ${ms(timing.features)}`);
  parts.push(`encode ${ms(timing.encode)}`, `first stage ${ms(timing.first_stage)}`);
  if ("rerank" in timing) parts.push(`re-rank ${ms(timing.rerank)} (top ${rerank})`);
  if (timing.wait > 1) parts.push(`queued ${ms(timing.wait)}`);
  parts.push(`total ${ms(timing.total)} on the server`);
  return parts.join(" · ");
}

function scoreText(hit) {
  return hit.reranked ? `model ${hit.score.toFixed(3)} · cosine ${hit.cosine.toFixed(3)}`
                      : `cosine ${hit.cosine.toFixed(3)}`;
}

async function api(url, options) {
  const response = await fetch(url, options);
  let data;
  try {
    data = await response.json();
  } catch (error) {
    throw new Error(`the server answered ${response.status} without JSON`);
  }
  if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
  return data;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text || "";
  status.classList.toggle("error", Boolean(isError));
}

// An image card: thumbnail (or its id when the index has no image files), rank, score, caption; a click opens
// the image's own query (its captions and similar images).
function card(hit, rank) {
  const link = el("a", "card");
  link.href = `/?image=${hit.id}`;
  link.dataset.id = hit.id;
  if (hit.image_url) {
    const img = el("img", "thumb");
    img.alt = hit.caption || `image ${hit.id}`;
    img.addEventListener("load", () => { img.dataset.loaded = "1"; });
    img.src = hit.image_url;
    link.append(img);
  } else {
    link.append(el("div", "noimg", `image ${hit.id}`));
  }
  link.append(el("div", "score", `#${rank} · image ${hit.id} · ${scoreText(hit)}`));
  if (hit.caption) link.append(el("div", "caption", hit.caption));
  link.addEventListener("click", (event) => {
    if (event.ctrlKey || event.metaKey || event.shiftKey) return; // let the browser open a new tab
    event.preventDefault();
    openImage(hit.id, true);
  });
  return link;
}

async function search(text, push) {
  text = text.trim();
  if (!text) return;
  $("q").value = text;
  if (push) history.pushState(null, "", `/?q=${encodeURIComponent(text)}`);
  document.title = `temde: ${text}`;
  $("detail").hidden = true;
  setStatus("searching…");
  try {
    const data = await api(`/api/search?q=${encodeURIComponent(text)}&k=${RESULTS}`);
    const grid = $("results");
    grid.replaceChildren(...data.results.map((hit, i) => card(hit, i + 1)));
    $("results-title").textContent = `${data.results.length} images for “${data.query}”`;
    $("timing").textContent = timingText(data.timing_ms, data.rerank);
    const unknown = data.unknown_words.length
      ? `not in the model's vocabulary (read as unknown): ${data.unknown_words.join(", ")}` : "";
    setStatus(unknown);
    document.body.dataset.results = String(data.results.length);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function showDetail(data, title, imageSrc) {
  const img = $("detail-img");
  img.hidden = !imageSrc;
  if (imageSrc) img.src = imageSrc;
  $("detail-title").textContent = title;
  const own = data.image && data.image.captions.length ? `its caption: ${data.image.captions.join(" / ")}` : "";
  $("detail-own").textContent = own;
  $("detail-timing").textContent = timingText(data.timing_ms, data.rerank);
  const list = $("detail-captions");
  list.replaceChildren(...data.results.map((hit) => {
    const item = el("li", hit.match ? "match" : "");
    item.append(el("span", "", hit.caption || `caption ${hit.id}`));
    item.append(el("span", "score", ` ${scoreText(hit)} · image ${hit.image_id}${hit.match ? " ✓ its own" : ""}`));
    return item;
  }));
  if (!data.results.length) list.append(el("li", "meta", "this index holds no captions"));
  $("detail-similar").replaceChildren(...data.similar.map((hit, i) => card(hit, i + 1)));
  $("detail").hidden = false;
  $("detail").scrollIntoView({block: "start"});
  document.body.dataset.detail = String(data.results.length);
}

async function openImage(id, push) {
  if (push) {
    const params = new URLSearchParams(location.search);
    params.set("image", id);
    history.pushState(null, "", `/?${params}`);
  }
  setStatus("looking at image " + id + "…");
  try {
    const data = await api(`/api/image/${id}?k=${CAPTIONS}`);
    setStatus("");
    showDetail(data, `Image ${id}`, data.image.image_url);
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function upload(file) {
  if (!file) return;
  setStatus(`reading ${file.name}…`);
  try {
    const data = await api(`/api/image?k=${CAPTIONS}`, {
      method: "POST", body: file, headers: {"Content-Type": file.type || "application/octet-stream"},
    });
    setStatus("");
    showDetail(data, `Your picture: ${file.name}`, URL.createObjectURL(file));
  } catch (error) {
    setStatus(`${file.name}: ${error.message}`, true);
  }
}

function fromLocation() {
  const params = new URLSearchParams(location.search);
  const text = params.get("q");
  if (text) search(text, false);
  else $("detail").hidden = true;
  const image = params.get("image");
  if (image !== null && /^[0-9]+$/.test(image)) openImage(Number(image), false);
}

async function start() {
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    search($("q").value, true);
  });
  $("file").addEventListener("change", (event) => upload(event.target.files[0]));
  $("close").addEventListener("click", () => { $("detail").hidden = true; });
  window.addEventListener("popstate", fromLocation);
  try {
    config = await api("/api/health");
    const parts = [`${config.images} images`, `${config.captions} captions`, `${config.kind} index`,
                   config.rerank ? `re-ranking the top ${config.rerank} with the model` : "cosine of global vectors",
                   `model ${config.model}`];
    if (!config.thumbnails) parts.push("no image files: results show captions and ids");
    $("info").textContent = parts.join(" · ");
    $("upload").hidden = !config.upload;
  } catch (error) {
    setStatus(`the server is not answering: ${error.message}`, true);
  }
  fromLocation();
}

document.addEventListener("DOMContentLoaded", start);
