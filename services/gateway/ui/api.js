// The HTTP API of the gateway, as the page uses it: JSON requests, uploads with progress, and
// Server-Sent Events. Paths only (same origin); links in answers are rebuilt from ids so the
// page works behind any proxy.
//
// API tokens: a gateway with tokens answers 401 without one. Then the page asks for the token
// once (`setTokenPrompt`: app.js shows a form), keeps it in sessionStorage for this tab, and
// sends it as `Authorization: Bearer` on every request; an EventSource cannot set headers, and a
// download is a plain link, so those carry it as `?token=`. A stored token the server refuses
// is dropped and asked for again. Without tokens nothing of this shows.

/** Where the tab keeps the token. */
const TOKEN_KEY = "dme-token";

let token = sessionStorage.getItem(TOKEN_KEY) || "";

/** The token the page sends, or "" when it has none. */
export const currentToken = () => token;

/** Asks the person for a token: `(refused) => Promise<string>`; set by the views. */
let promptForToken = null;
/** The question being asked, shared by every request that meets a 401 meanwhile. */
let asking = null;

/** Sets how the page asks for a token: `ask(refused)` resolves to the token typed. */
export function setTokenPrompt(ask) {
  promptForToken = ask;
}

/**
 * A 401 came back, for a request that carried `sent` (the token or ""): drops a token the
 * server refused, and waits for a new one. Resolves true when a retry may succeed.
 */
async function needToken(sent) {
  if (!promptForToken) return false;
  if (token !== sent) return true; // another request already got a newer token
  if (!asking) {
    const refused = sent !== "";
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    asking = promptForToken(refused).then((typed) => {
      token = typed.trim();
      sessionStorage.setItem(TOKEN_KEY, token);
    }).finally(() => { asking = null; });
  }
  await asking;
  return true;
}

/** `fetch` with the token, asking for one (and retrying) while the answer is 401. */
export async function authorizedFetch(path, init = {}) {
  for (;;) {
    const sent = token;
    const headers = { ...(init.headers || {}) };
    if (sent) headers.authorization = `Bearer ${sent}`;
    const response = await fetch(path, { ...init, headers });
    if (response.status !== 401 || !(await needToken(sent))) return response;
  }
}

/** `path` with the token as `?token=`, for what cannot send a header (links, EventSource). */
export function withToken(path) {
  if (!token) return path;
  return `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

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
  const response = await authorizedFetch(path, init);
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
  const response = await authorizedFetch(`/music/${id}/track/${trackId}/peaks`);
  if (!response.ok) return null;
  const body = await response.json();
  return Array.isArray(body.peaks) ? body : null;
}

export const trackUrl = (id, trackId, format) => `/music/${id}/track/${trackId}?format=${format}`;
export const mixUrl = (id, key, format) => `/music/${id}/mix/${encodeURIComponent(key)}?format=${format}`;

/** A stem's audio as bytes, for the player. Rejects with an ApiError. */
export async function getAudio(id, trackId, format) {
  const response = await authorizedFetch(trackUrl(id, trackId, format));
  if (!response.ok) throw await failure(response);
  return response.arrayBuffer();
}

export const prefixUrl = (id, trackId) => `/music/${id}/track/${trackId}/prefix?format=wav`;

/**
 * The part of a stem separated so far, from the song's start, for the player: {bytes, seconds,
 * complete}. Rejects with an ApiError (404 while nothing of it is separated).
 */
export async function getPrefix(id, trackId) {
  const response = await authorizedFetch(prefixUrl(id, trackId));
  if (!response.ok) throw await failure(response);
  return {
    bytes: await response.arrayBuffer(),
    seconds: Number(response.headers.get("Dme-Ready-Seconds")) || 0,
    complete: response.headers.get("Dme-Complete") === "true",
  };
}

/**
 * Uploads one file as a raw body. `onProgress(fraction)` follows the bytes sent. Resolves to
 * the song (`POST /music`'s answer), rejects with an ApiError.
 */
export async function upload(file, onProgress) {
  for (;;) {
    const sent = token;
    try {
      return await uploadOnce(file, onProgress, sent);
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 401 || !(await needToken(sent))) throw e;
      onProgress(0);
    }
  }
}

function uploadOnce(file, onProgress, sent) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/music?name=${encodeURIComponent(file.name)}`);
    xhr.setRequestHeader("content-type", "application/octet-stream");
    if (sent) xhr.setRequestHeader("authorization", `Bearer ${sent}`);
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
  let source = null;
  let closed = false;
  let retry = 0;
  const open = () => {
    // A stream opened anew starts with the current state, so nothing is lost between two.
    source = new EventSource(withToken(path));
    for (const type of ["progress", "stem", "mix", "failed"]) {
      source.addEventListener(type, (e) => {
        let data;
        try { data = JSON.parse(e.data); } catch (_) { return; }
        onEvent(type, data);
      });
    }
    source.onopen = () => {
      retry = 0;
      onStatus(true);
    };
    source.onerror = () => {
      onStatus(false);
      // The browser gives up for good on an answer that is not an event stream (a 401 among
      // them, whose status it does not tell): ask the same URL with fetch to learn why, get a
      // token if that is it, and open the stream again.
      if (source.readyState === EventSource.CLOSED && !closed) reopen();
    };
  };
  const reopen = async () => {
    const controller = new AbortController();
    try {
      const response = await authorizedFetch(path, { signal: controller.signal });
      controller.abort();
      if (!response.ok) throw new Error(String(response.status));
    } catch (_) {
      // Not a token matter (the server away, a song deleted): try again a little later.
      retry = Math.min(retry + 1, 6);
      await new Promise((r) => setTimeout(r, 1000 * 2 ** retry));
    }
    if (!closed) open();
  };
  open();
  return () => {
    closed = true;
    source.close();
  };
}
