// The HTTP API of the gateway, as the page uses it: JSON requests, uploads with progress, and
// Server-Sent Events. Paths only (same origin); links in answers are rebuilt from ids so the
// page works behind any proxy.

/** An answer that is not 2xx: its status and the API's `{"error": "..."}` text. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) message = body.error;
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(response.status, message);
}

async function json(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

export const listSongs = () => json("GET", "/music");
export const getSong = (id) => json("GET", `/music/${id}`);
export const deleteSong = (id) => json("DELETE", `/music/${id}`);
export const retrySong = (id) => json("POST", `/music/${id}/retry`);
export const resetAll = () => json("POST", "/reset");

/**
 * Asks for a mix of `tracks` (`[{track_id, gain_db}]`). Answers `{key, gains: true}` when the
 * server took the gains; a server that only knows the original array of track ids gets that
 * (gains ignored) and the answer says `gains: false`.
 */
export async function requestMix(id, tracks) {
  try {
    const answer = await json("POST", `/music/${id}`, { tracks });
    return { ...answer, gains: true };
  } catch (e) {
    // An older gateway: "body must be a JSON array of track ids".
    if (!(e instanceof ApiError) || e.status !== 400 || !/JSON array/.test(e.message)) throw e;
    const answer = await json("POST", `/music/${id}`, tracks.map((t) => t.track_id));
    return { ...answer, gains: false };
  }
}

/** The waveform peaks of a stem, or null while the server has none (or no such endpoint). */
export async function getPeaks(id, trackId) {
  const response = await fetch(`/music/${id}/track/${trackId}/peaks`);
  if (!response.ok) return null;
  const body = await response.json();
  return Array.isArray(body.peaks) ? body : null;
}

export const trackUrl = (id, trackId, format) => `/music/${id}/track/${trackId}?format=${format}`;
export const mixUrl = (id, key, format) => `/music/${id}/mix/${encodeURIComponent(key)}?format=${format}`;

/**
 * Uploads one file as a raw body. `onProgress(fraction)` follows the bytes sent. Resolves to
 * the song (`POST /music`'s answer), rejects with an ApiError.
 */
export function upload(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/music?name=${encodeURIComponent(file.name)}`);
    xhr.setRequestHeader("content-type", "application/octet-stream");
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300 && body) {
        onProgress(1);
        resolve(body);
      } else {
        reject(new ApiError(xhr.status, (body && body.error) || `upload failed (${xhr.status})`));
      }
    };
    xhr.onerror = () => reject(new ApiError(0, "the connection to the server broke"));
    xhr.send(file);
  });
}

/**
 * Follows an event stream (`/events` or `/music/{id}/events`): `onEvent(type, data)` for each
 * event, `onStatus(open)` when the connection opens or drops (the browser reconnects by
 * itself, with Last-Event-ID, so nothing is lost). Returns a function that closes it.
 */
export function follow(path, onEvent, onStatus = () => {}) {
  const source = new EventSource(path);
  for (const type of ["progress", "stem", "mix", "failed"]) {
    source.addEventListener(type, (e) => {
      let data;
      try { data = JSON.parse(e.data); } catch (_) { return; }
      onEvent(type, data);
    });
  }
  source.onopen = () => onStatus(true);
  source.onerror = () => onStatus(false);
  return () => source.close();
}
