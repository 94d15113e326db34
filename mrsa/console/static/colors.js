// One colour per extracted answer, stable while the page lives: an answer keeps the colour it got
// when first seen, the first answers get the palette's well-separated colours, later ones a hue
// derived from the answer text. No answer is grey.

const PALETTE = [
  "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1",
  "#76b7b2", "#edc948", "#ff9da7", "#9c755f", "#2f4b7c",
];
export const NO_ANSWER = "#b8b8b8";

const assigned = new Map();

function hashHue(text) {
  let hash = 2166136261;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 16777619);
  return (hash >>> 0) % 360;
}

export function answerColor(answer) {
  if (answer === null || answer === undefined || answer === "") return NO_ANSWER;
  let color = assigned.get(answer);
  if (!color) {
    color = assigned.size < PALETTE.length ? PALETTE[assigned.size] : `hsl(${hashHue(answer)} 55% 55%)`;
    assigned.set(answer, color);
  }
  return color;
}
