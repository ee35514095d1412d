// The review page's keys: 1-4 score (with the note) and go to the next case, arrows or the wheel
// scroll slices, n / p next / previous case, e the note (Esc leaves it).
"use strict";

const page = document.body.dataset;
const SCORE_KEYS = { "1": "acceptable", "2": "minor", "3": "major", "4": "unusable" };

const slices = page.slices ? JSON.parse(page.slices) : [];
const promptSlice = page.promptSlice === "" || page.promptSlice === undefined ? null : Number(page.promptSlice);
let position = Math.max(0, slices.indexOf(promptSlice));
let saving = false;

function sliceUrl(k) {
  return `/segmentation/${page.segmentation}/slice/${k}.png`;
}

function show(at) {
  const image = document.getElementById("slice");
  if (!image || !slices.length) return;
  position = Math.min(slices.length - 1, Math.max(0, at));
  const k = slices[position];
  image.src = sliceUrl(k);
  document.getElementById("slider").value = position;
  document.getElementById("slice-label").textContent =
    `slice ${k} (${position + 1} of ${slices.length})` + (k === promptSlice ? " · drawn here" : "");
}

function preload() {  // the server renders each slice once; fetch them while the reviewer looks
  for (const k of slices) new Image().src = sliceUrl(k);
}

async function score(value) {
  if (saving || !page.segmentation) return;
  saving = true;
  const status = document.getElementById("status");
  status.textContent = "saving…";
  try {
    const response = await fetch(`/api/segmentations/${page.segmentation}/review`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ score: value, note: document.getElementById("note").value }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.detail || response.statusText);
    status.textContent = `saved: ${answer.score} by ${answer.reviewer}`;
    document.body.dataset.saved = answer.score;
    const entry = document.querySelector(`#queue li[data-id="${page.segmentation}"] .score`);
    if (entry) { entry.textContent = answer.score; entry.className = `score score-${answer.score}`; }
    if (page.next) window.location.assign(page.next);
    else status.textContent += " · end of the queue";
  } catch (error) {
    status.textContent = `not saved: ${error.message}`;
  } finally {
    saving = false;
  }
}

document.addEventListener("keydown", (event) => {
  const note = document.getElementById("note");
  if (event.target === note) {
    if (event.key === "Escape") note.blur();
    return;
  }
  const typing = event.target.tagName === "SELECT"
    || (event.target.tagName === "INPUT" && !["range", "checkbox"].includes(event.target.type));
  if (event.ctrlKey || event.metaKey || event.altKey || typing) return;
  if (SCORE_KEYS[event.key]) score(SCORE_KEYS[event.key]);
  else if (event.key === "ArrowUp" || event.key === "k") show(position - 1);
  else if (event.key === "ArrowDown" || event.key === "j") show(position + 1);
  else if (event.key === "n" && page.next) window.location.assign(page.next);
  else if (event.key === "p" && page.previous) window.location.assign(page.previous);
  else if (event.key === "e" && note) note.focus();
  else return;
  event.preventDefault();
});

for (const button of document.querySelectorAll(".score-button")) {
  button.addEventListener("click", () => score(button.dataset.score));
}
for (const button of document.querySelectorAll(".keyslice")) {
  button.addEventListener("click", () => show(slices.indexOf(Number(button.dataset.slice))));
}
const slider = document.getElementById("slider");
if (slider) slider.addEventListener("input", () => show(Number(slider.value)));
const image = document.getElementById("slice");
if (image) {
  image.addEventListener("wheel", (event) => { event.preventDefault(); show(position + Math.sign(event.deltaY)); },
                         { passive: false });
  show(position);
  preload();
}
