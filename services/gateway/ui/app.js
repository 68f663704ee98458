// The page: a library of songs (upload, live state, delete, reset) and a song view (live
// progress, one lane per stem with waveform, mute, solo and volume, synchronised playback,
// export of the user's mix). State lives in `state`; views render from it; the server's
// event streams drive every change, nothing polls. A server with API tokens gets its token
// through a form the first time it answers 401 (api.js keeps it for the tab).

import * as api from "./api.js";
import { Player } from "./player.js";
import { drawWaveform } from "./waveform.js";

const $ = (id) => document.getElementById(id);

const state = {
  /** Songs by id: `GET /music` items, updated by `/events`. */
  songs: new Map(),
  /** The open song, or null: {id, data (its latest event), player, lanes (DOM per stem), ...}. */
  song: null,
};

// ---- library ---------------------------------------------------------------------------------

const songItems = new Map();

function mergeSong(data) {
  const old = state.songs.get(data.music_id) || {};
  const merged = { ...old, ...data };
  state.songs.set(data.music_id, merged);
  renderSong(merged);
}

function renderSong(song) {
  let li = songItems.get(song.music_id);
  if (!li) {
    li = $("song-item").content.firstElementChild.cloneNode(true);
    const del = li.querySelector(".delete");
    del.addEventListener("click", () => removeSong(song.music_id));
    songItems.set(song.music_id, li);
    $("songs").append(li);
  }
  const name = song.name || `song ${song.music_id}`;
  const title = li.querySelector(".title");
  title.textContent = song.band ? `${name} (${song.band})` : name;
  title.href = `#/music/${song.music_id}`;
  li.querySelector(".state").textContent = song.state || "";
  const bar = li.querySelector("progress");
  bar.value = song.progress || 0;
  bar.setAttribute("aria-label", `${name}: progress`);
  li.querySelector(".percent").textContent = `${song.progress || 0}%`;
  li.querySelector(".delete").setAttribute("aria-label", `Delete ${name}`);
  li.dataset.state = song.state || "";
  $("library-empty").hidden = state.songs.size > 0;
}

async function removeSong(id) {
  try {
    await api.deleteSong(id);
  } catch (e) {
    if (e.status !== 404) return alert(`Could not delete: ${e.message}`);
  }
  state.songs.delete(id);
  songItems.get(id)?.remove();
  songItems.delete(id);
  $("library-empty").hidden = state.songs.size > 0;
  if (state.song && state.song.id === id) location.hash = "";
}

async function resetEverything() {
  if (!confirm("Delete every song, its stems and mixes? This cannot be undone.")) return;
  try {
    await api.resetAll();
  } catch (e) {
    return alert(`Could not reset: ${e.message}`);
  }
  for (const li of songItems.values()) li.remove();
  songItems.clear();
  state.songs.clear();
  $("library-empty").hidden = false;
  location.hash = "";
}

async function startLibrary() {
  try {
    for (const song of await api.listSongs()) mergeSong(song);
  } catch (e) {
    $("library-empty").textContent = `Could not list songs: ${e.message}`;
  }
  api.follow("/events", (_, data) => {
    if (!state.songs.has(data.music_id)) {
      // A song uploaded elsewhere: its name comes with its record.
      api.getSong(data.music_id).then(mergeSong, () => {});
    }
    mergeSong({ music_id: data.music_id, state: data.state, progress: data.progress });
  });
}

// ---- uploads ---------------------------------------------------------------------------------

function uploadFiles(files) {
  const list = [...files];
  for (const file of list) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = file.name;
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", `Uploading ${file.name}`);
    const status = document.createElement("span");
    status.className = "muted";
    status.textContent = "uploading";
    li.append(name, bar, status);
    $("uploads").append(li);
    api.upload(file, (f) => { bar.value = Math.round(f * 100); }).then((song) => {
      status.textContent = "uploaded";
      mergeSong(song);
      if (list.length === 1) location.hash = `#/music/${song.music_id}`;
    }, (e) => {
      status.textContent = e.message;
      status.className = "error";
    });
  }
}

function startUploads() {
  const input = $("files");
  input.addEventListener("change", () => {
    uploadFiles(input.files);
    input.value = "";
  });
  const zone = $("upload");
  zone.addEventListener("submit", (e) => e.preventDefault());
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) uploadFiles(e.dataTransfer.files);
  });
  // A file dropped beside the zone must not navigate away from the page.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());
}

// ---- the song view ---------------------------------------------------------------------------

const FORMATS = [["wav", "WAV"], ["flac", "FLAC"], ["mp3", "MP3"]];

function openSong(id) {
  closeSong();
  const song = {
    id,
    data: null,
    player: new Player(),
    lanes: [],
    peaks: [],
    pendingExport: null,
    stop: null,
    frame: 0,
  };
  state.song = song;
  song.player.onEnded = () => renderTransport();
  const known = state.songs.get(id);
  renderTitle(known);
  if (!known || !known.name) api.getSong(id).then((s) => { if (state.song === song) renderTitle(s); }, () => {});
  $("lanes").replaceChildren();
  $("transport").hidden = true;
  $("export").hidden = true;
  $("stems-pending").hidden = false;
  $("export-status").textContent = "";
  $("mix-link").hidden = true;
  $("player-note").textContent = "";
  renderStatus({ state: "…", progress: 0, segments: 0, segments_done: 0 });
  song.stop = api.follow(`/music/${id}/events`, (_, data) => onSongEvent(song, data), (open) => {
    if (!open && state.song === song) $("player-note").textContent = "Reconnecting to the server…";
    else if (state.song === song) $("player-note").textContent = "";
  });
}

function closeSong() {
  const song = state.song;
  if (!song) return;
  song.stop();
  cancelAnimationFrame(song.frame);
  song.player.close();
  state.song = null;
}

function renderTitle(known) {
  if (!known) return;
  $("song-title").textContent = known.name || `Song ${known.music_id}`;
  $("song-band").textContent = known.band || "";
  document.title = `${known.name || "Song"} · dme`;
}

function renderStatus(data) {
  $("song-state").textContent = data.state;
  $("song-progress").value = data.progress;
  $("song-percent").textContent = `${data.progress}%`;
  $("song-segments").textContent = data.segments
    ? `${data.segments_done} of ${data.segments} segments` : "";
  const failed = data.state === "failed" || data.state === "stalled";
  $("song-error").hidden = !data.error;
  $("song-error").textContent = data.error ? `${failed ? "Failed" : "Note"}: ${data.error}` : "";
  $("retry").hidden = data.state !== "failed";
}

function onSongEvent(song, data) {
  if (state.song !== song) return;
  song.data = data;
  renderStatus(data);
  mergeSong({ music_id: data.music_id, state: data.state, progress: data.progress });
  // A lane per stem as soon as the start of the stems can be heard (`ready_s`), each stem's
  // whole audio once it is assembled (`instruments`).
  const whole = data.instruments || [];
  const stems = whole.length ? whole : data.ready_s > 0 ? data.tracks || [] : [];
  for (const stem of stems) {
    if (!song.lanes.some((l) => l.trackId === stem.track_id)) addLane(song, stem);
  }
  for (const view of song.lanes) refreshLane(song, view);
  renderPreview(song);
  checkExport(song);
}

/** Seconds of a stem before the playhead at which a longer part of it is fetched. */
const REFILL_AHEAD_S = 15;

/**
 * Fetches a lane's audio when there is more of it: the whole stem once it is assembled; while
 * the song separates, the part separated so far (from the start each time), again when that
 * has doubled or when the playhead nears the end of what is loaded and more is ready.
 */
function refreshLane(song, view) {
  const data = song.data;
  if (!data || state.song !== song) return;
  const whole = (data.instruments || []).some((i) => i.track_id === view.trackId);
  if (whole && !view.downloads) addDownloads(song, view);
  if (view.loading || view.complete || Date.now() < view.retryAt) return;
  const ready = data.ready_s || 0;
  const player = song.player;
  const nearEnd = player.playing && player.position >= view.loadedS - REFILL_AHEAD_S;
  const grown = ready >= 2 * view.loadedS || (nearEnd && ready > view.loadedS);
  if (whole || (ready > 0 && grown)) loadLane(song, view, whole);
}

function renderPreview(song) {
  const partial = song.lanes.filter((v) => !v.complete && v.loadedS > 0);
  const seconds = Math.min(...partial.map((v) => v.loadedS));
  $("preview-note").hidden = partial.length === 0;
  $("preview-note").textContent = partial.length
    ? `The first ${clock(seconds)} are separated: play them while the rest separates.` : "";
}

function addLane(song, instrument) {
  const index = song.lanes.length;
  const lane = song.player.addLane(instrument.track_id, instrument.name);
  const li = $("lane").content.firstElementChild.cloneNode(true);
  const n = index + 1;
  li.querySelector(".name").textContent = instrument.name;
  const mute = li.querySelector(".mute");
  mute.setAttribute("aria-label", `Mute ${instrument.name}${n <= 9 ? ` (key ${n})` : ""}`);
  mute.addEventListener("click", () => { song.player.toggleMute(index); renderLanes(song); });
  const solo = li.querySelector(".solo");
  solo.setAttribute("aria-label", `Solo ${instrument.name}${n <= 9 ? ` (shift+${n})` : ""}`);
  solo.addEventListener("click", () => { song.player.toggleSolo(index); renderLanes(song); });
  const volume = li.querySelector("input[type=range]");
  const volumeId = `volume-${index}`;
  volume.id = volumeId;
  li.querySelector(".volume .visually-hidden").textContent = `${instrument.name} volume (dB)`;
  const db = li.querySelector(".db");
  db.htmlFor = volumeId;
  volume.addEventListener("input", () => {
    song.player.setVolume(index, Number(volume.value));
    renderLanes(song);
  });
  const canvas = li.querySelector("canvas");
  canvas.addEventListener("click", (e) => {
    const rect = canvas.getBoundingClientRect();
    song.player.seek(((e.clientX - rect.left) / rect.width) * song.player.duration);
    renderTransport();
  });
  song.lanes.push({
    trackId: instrument.track_id, name: instrument.name, li, canvas, peaks: null, lane,
    loadedS: 0, complete: false, loading: false, retryAt: 0, downloads: false,
  });
  $("lanes").append(li);
  $("stems-pending").hidden = true;
  $("export").hidden = false;
  renderLanes(song);
}

/** The lane's download links, once its whole stem is assembled. */
function addDownloads(song, view) {
  view.downloads = true;
  const downloads = view.li.querySelector(".downloads");
  for (const [format, label] of FORMATS) {
    const a = document.createElement("a");
    const path = api.trackUrl(song.id, view.trackId, format);
    a.href = api.withToken(path);
    // The token may have changed since the link was made.
    a.addEventListener("click", () => { a.href = api.withToken(path); });
    a.download = "";
    a.textContent = label;
    a.setAttribute("aria-label", `Download ${view.name} as ${label}`);
    downloads.append(" ", a);
  }
  downloads.hidden = false;
}

/** Loads a lane's audio: the whole stem, or the part of it separated so far. */
async function loadLane(song, view, whole) {
  const id = song.id;
  view.loading = true;
  try {
    const got = whole
      ? { bytes: await api.getAudio(id, view.trackId, "wav"), seconds: Infinity, complete: true }
      : await api.getPrefix(id, view.trackId);
    if (state.song !== song) return;
    await song.player.load(view.lane, got.bytes);
    view.loadedS = got.complete ? Infinity : got.seconds;
    view.complete = got.complete;
    view.li.dataset.ready = got.complete ? "true" : "partial";
    if (got.complete) {
      api.getPeaks(id, view.trackId).then((p) => {
        view.peaks = p ? p.peaks : null;
        drawLane(song, view);
      }, () => {});
    }
    $("transport").hidden = false;
    renderTransport();
  } catch (e) {
    view.loading = false;
    // Tried again a little later, whatever events come meanwhile.
    view.retryAt = Date.now() + 3000;
    setTimeout(() => { view.retryAt = 0; refreshLane(song, view); }, 3000);
    if (state.song === song) $("player-note").textContent = `Could not load ${view.name}: ${e.message}`;
    return;
  }
  view.loading = false;
  if (state.song !== song) return;
  renderPreview(song);
  // Events that came while it loaded may have made more of it ready.
  refreshLane(song, view);
}

function renderLanes(song) {
  const player = song.player;
  song.lanes.forEach((view, i) => {
    const lane = player.lanes[i];
    view.li.querySelector(".mute").setAttribute("aria-pressed", String(lane.muted));
    view.li.querySelector(".solo").setAttribute("aria-pressed", String(lane.soloed));
    view.li.querySelector(".db").textContent = `${lane.db.toFixed(1)} dB`;
    view.li.classList.toggle("silent", !player.audible(lane));
    drawLane(song, view);
  });
}

function drawLane(song, view) {
  const duration = song.player.duration;
  drawWaveform(view.canvas, view.peaks, duration ? song.player.position / duration : 0);
}

const clock = (s) => {
  const m = Math.floor(s / 60);
  const rest = (s - m * 60).toFixed(1).padStart(4, "0");
  return `${m}:${rest}`;
};

function renderTransport() {
  const song = state.song;
  if (!song) return;
  const { player } = song;
  const seek = $("seek");
  seek.max = String(player.duration || 1);
  if (!seek.matches(":active")) seek.value = String(player.position);
  $("time").textContent = `${clock(player.position)} / ${clock(player.duration)}`;
  $("play").textContent = player.playing ? "Pause" : "Play";
  $("play").setAttribute("aria-label", player.playing ? "Pause (space)" : "Play (space)");
  for (const view of song.lanes) drawLane(song, view);
}

function tick() {
  const song = state.song;
  if (!song) return;
  renderTransport();
  // The playhead nearing the end of a stem's part still separating fetches more of it.
  if (song.player.playing) for (const view of song.lanes) refreshLane(song, view);
  if (song.player.playing) song.frame = requestAnimationFrame(tick);
}

async function togglePlay() {
  const song = state.song;
  if (!song || !song.player.duration) return;
  if (song.player.playing) song.player.pause();
  else await song.player.play();
  tick();
}

// ---- export ----------------------------------------------------------------------------------

async function exportMix() {
  const song = state.song;
  if (!song) return;
  const tracks = song.player.selection();
  const status = $("export-status");
  if (tracks.length === 0) {
    status.textContent = "Nothing is heard: unmute a stem first.";
    return;
  }
  const format = $("mix-format").value;
  $("mix-link").hidden = true;
  status.textContent = "Asking the server for your mix…";
  try {
    const answer = await api.requestMix(song.id, tracks);
    if (state.song !== song) return;
    song.pendingExport = { key: answer.key, tracks: tracks.map((t) => t.track_id), format, gains: answer.gains };
    status.textContent = answer.gains
      ? "Mixing… (it downloads when ready)"
      : "Mixing… (this server ignores volumes: the stems are mixed at 0 dB)";
    checkExport(song);
    // The mix may have been ready before this stream's last event: ask once.
    api.getSong(song.id).then((data) => { if (state.song === song) checkExport(song, data); }, () => {});
  } catch (e) {
    status.textContent = `Could not mix: ${e.message}`;
  }
}

/** The ready mix's key for the pending export, from an event (or GET) of the song, or null. */
function readyKey(pending, data) {
  if (!data) return null;
  if (pending.key) {
    const mix = (data.mixes || []).find((m) => m.key === pending.key && m.ready);
    if (mix) return pending.key;
    const final = data.final || "";
    return final.endsWith(`/mix/${pending.key}`) || final.endsWith(`/mix/${encodeURIComponent(pending.key)}`)
      ? pending.key : null;
  }
  // A server that does not answer the key: the final mix of exactly this selection.
  const same = (a, b) => a.length === b.length && a.every((x) => b.includes(x));
  if (data.final && data.selection && same(data.selection, pending.tracks)) {
    return decodeURIComponent(data.final.split("/mix/").pop());
  }
  return null;
}

function checkExport(song, data = song.data) {
  const pending = song.pendingExport;
  if (!pending) return;
  const key = readyKey(pending, data);
  if (!key) return;
  song.pendingExport = null;
  const link = $("mix-link");
  const option = [...$("mix-format").options].find((o) => o.value === pending.format);
  const label = option ? option.textContent : pending.format;
  link.href = api.withToken(api.mixUrl(song.id, key, pending.format));
  link.textContent = `Download the mix (${label})`;
  link.dataset.key = key;
  link.hidden = false;
  $("export-status").textContent = pending.gains
    ? "Your mix is ready."
    : "Your mix is ready (this server mixed the stems at 0 dB).";
  link.click();
}

// ---- the API token ----------------------------------------------------------------------------

/**
 * Asks for the API token in the page's dialog (`refused`: the last one was not accepted) and
 * resolves to what was typed. The dialog stays until a token is given: without one the server
 * answers nothing.
 */
function askToken(refused) {
  return new Promise((resolve) => {
    const dialog = $("token-dialog");
    const form = $("token-form");
    const input = $("token-input");
    $("token-refused").hidden = !refused;
    input.value = "";
    const reopen = () => dialog.showModal();
    const submit = (e) => {
      e.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      form.removeEventListener("submit", submit);
      dialog.removeEventListener("close", reopen);
      dialog.close();
      input.value = "";
      resolve(token);
    };
    form.addEventListener("submit", submit);
    dialog.addEventListener("close", reopen);
    dialog.showModal();
    input.focus();
  });
}

// ---- keyboard, routing, start ----------------------------------------------------------------

function onKey(e) {
  const song = state.song;
  if (!song || e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  const typing = t.closest && t.closest("input:not([type=range]):not([type=file]), textarea, select");
  if (typing) return;
  // Space on a button, link or summary is that control's own action.
  if (e.code === "Space" && t.closest && t.closest("button, a, summary, input[type=file]")) return;
  if (e.code === "Space") {
    e.preventDefault();
    togglePlay();
    return;
  }
  const digit = /^Digit([1-9])$/.exec(e.code);
  if (!digit) return;
  const i = Number(digit[1]) - 1;
  if (i >= song.player.lanes.length) return;
  e.preventDefault();
  if (e.shiftKey) song.player.toggleSolo(i);
  else song.player.toggleMute(i);
  renderLanes(song);
}

function route() {
  const m = /^#\/music\/(\d+)$/.exec(location.hash);
  $("library-view").hidden = !!m;
  $("song-view").hidden = !m;
  if (m) {
    const id = Number(m[1]);
    if (!state.song || state.song.id !== id) openSong(id);
  } else {
    closeSong();
    document.title = "dme: stems of your songs";
  }
}

function start() {
  api.setTokenPrompt(askToken);
  startUploads();
  startLibrary();
  $("reset").addEventListener("click", resetEverything);
  $("play").addEventListener("click", togglePlay);
  $("seek").addEventListener("input", () => {
    state.song?.player.seek(Number($("seek").value));
    renderTransport();
  });
  $("export-mix").addEventListener("click", exportMix);
  $("retry").addEventListener("click", () => {
    if (state.song) api.retrySong(state.song.id).catch((e) => alert(`Could not retry: ${e.message}`));
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => state.song && renderLanes(state.song));
  route();
}

// A handle for people debugging in the console and for the browser test: the open song's
// player (its AudioContext and gain nodes).
window.dme = {
  state,
  get player() { return state.song ? state.song.player : null; },
};

start();
