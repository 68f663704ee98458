// A stem's waveform on a canvas, from the peaks the server computed (0..1 per column of
// frames): the part already played in the accent colour, the rest muted.

/** Draws `peaks` on `canvas` with `played` (0..1) of it highlighted; a flat line without peaks. */
export function drawWaveform(canvas, peaks, played) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const g = canvas.getContext("2d");
  const style = getComputedStyle(canvas);
  const accent = style.getPropertyValue("--wave-played").trim() || "#2563eb";
  const rest = style.getPropertyValue("--wave").trim() || "#94a3b8";
  g.clearRect(0, 0, width, height);
  const middle = height / 2;
  const split = Math.round(played * width);
  if (!peaks || peaks.length === 0) {
    g.fillStyle = rest;
    g.fillRect(0, middle - ratio / 2, width, Math.max(1, ratio));
    g.fillStyle = accent;
    g.fillRect(0, middle - ratio / 2, split, Math.max(1, ratio));
    return;
  }
  // Each stem drawn to its own loudest peak (a quiet stem still shows its shape), but silence
  // is not blown up into noise.
  const scale = 1 / Math.max(0.05, Math.max(...peaks));
  // One bar per device pixel column: the loudest peak of the peaks it covers.
  for (let x = 0; x < width; x++) {
    const from = Math.floor((x / width) * peaks.length);
    const to = Math.max(from + 1, Math.floor(((x + 1) / width) * peaks.length));
    let peak = 0;
    for (let i = from; i < to && i < peaks.length; i++) peak = Math.max(peak, peaks[i]);
    const h = Math.max(ratio, Math.min(1, peak * scale) * (height - 2));
    g.fillStyle = x < split ? accent : rest;
    g.fillRect(x, middle - h / 2, 1, h);
  }
}
