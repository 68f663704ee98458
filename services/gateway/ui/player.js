// Synchronised playback of a song's stems on one Web Audio clock.
//
// One AudioContext; each stem is decoded once and kept, and plays through its own GainNode.
// Play starts every stem's AudioBufferSourceNode at the same `when` on the context's clock,
// so they cannot drift apart; a stem that arrives while playing starts at that clock's
// position. Mute, solo and volume only change gains; seeking restarts every source at one
// offset.

/** Seconds between asking sources to start and their start: room to schedule them all. */
const START_AHEAD_S = 0.05;

/** Linear gain of `db` decibels. */
export const dbToGain = (db) => Math.pow(10, db / 20);

export class Player {
  constructor() {
    /** Created on first use (browsers want a user gesture before sound). */
    this.ctx = null;
    /** Per stem, in lane order: {trackId, name, buffer, gain (GainNode), source, db, muted, soloed}. */
    this.lanes = [];
    this.playing = false;
    /** Context time at which offset 0 of the song plays (while playing). */
    this.startedAt = 0;
    /** Position in seconds while paused. */
    this.offset = 0;
    this.onEnded = () => {};
  }

  context() {
    if (!this.ctx) {
      const Context = window.AudioContext || window.webkitAudioContext;
      this.ctx = new Context();
    }
    return this.ctx;
  }

  /** Longest stem, in seconds (0 before any is decoded). */
  get duration() {
    return this.lanes.reduce((d, l) => Math.max(d, l.buffer ? l.buffer.duration : 0), 0);
  }

  /** Where playback is, in seconds. */
  get position() {
    if (!this.playing) return this.offset;
    return Math.min(Math.max(0, this.ctx.currentTime - this.startedAt), this.duration);
  }

  /** Adds a stem (its lane index is its order of arrival); decode later with `load`. */
  addLane(trackId, name) {
    const ctx = this.context();
    const gain = ctx.createGain();
    gain.connect(ctx.destination);
    const lane = { trackId, name, buffer: null, gain, source: null, db: 0, muted: false, soloed: false };
    this.lanes.push(lane);
    this.applyGains();
    return lane;
  }

  /**
   * Decodes a stem's audio (bytes of a WAV) and, while playing, starts it in step. Loading a
   * lane again (a longer part of a stem still being separated, then the whole stem) replaces
   * its audio where it plays.
   */
  async load(lane, bytes) {
    const buffer = await this.context().decodeAudioData(bytes);
    if (!this.lanes.includes(lane)) return;
    lane.buffer = buffer;
    if (this.playing) {
      this.stopSource(lane);
      const when = this.ctx.currentTime + START_AHEAD_S;
      this.startSource(lane, when, when - this.startedAt);
      this.watchEnd();
    }
  }

  startSource(lane, when, offset) {
    if (!lane.buffer || offset >= lane.buffer.duration) return;
    const source = this.ctx.createBufferSource();
    source.buffer = lane.buffer;
    source.connect(lane.gain);
    source.start(when, Math.max(0, offset));
    lane.source = source;
  }

  stopSource(lane) {
    if (!lane.source) return;
    lane.source.onended = null;
    try { lane.source.stop(); } catch (_) { /* never started */ }
    lane.source.disconnect();
    lane.source = null;
  }

  stopSources() {
    for (const lane of this.lanes) this.stopSource(lane);
  }

  /** Plays every decoded stem from `offset` (default: where it is), all at one `when`. */
  async play(offset = this.position) {
    const ctx = this.context();
    if (ctx.state === "suspended") await ctx.resume();
    this.stopSources();
    if (offset >= this.duration) offset = 0;
    const when = ctx.currentTime + START_AHEAD_S;
    this.startedAt = when - offset;
    for (const lane of this.lanes) this.startSource(lane, when, offset);
    this.playing = true;
    this.watchEnd();
  }

  /** Calls onEnded when the longest source ends by itself. */
  watchEnd() {
    for (const lane of this.lanes) if (lane.source) lane.source.onended = null;
    const longest = this.lanes.filter((l) => l.source)
      .reduce((a, l) => (!a || l.buffer.duration > a.buffer.duration ? l : a), null);
    if (!longest) return;
    longest.source.onended = () => {
      this.offset = 0;
      this.playing = false;
      this.stopSources();
      this.onEnded();
    };
  }

  pause() {
    if (!this.playing) return;
    this.offset = this.position;
    this.playing = false;
    this.stopSources();
  }

  /** Moves to `seconds`; playing goes on from there. */
  seek(seconds) {
    const to = Math.min(Math.max(0, seconds), this.duration);
    if (this.playing) this.play(to);
    else this.offset = to;
  }

  /** Whether any stem is soloed. */
  get soloing() {
    return this.lanes.some((l) => l.soloed);
  }

  /** Whether a lane is heard: not muted, and soloed when any is. */
  audible(lane) {
    return !lane.muted && (!this.soloing || lane.soloed);
  }

  /** Sets each GainNode from its lane's volume, mute and solo (sources keep playing). */
  applyGains() {
    if (!this.ctx) return;
    const now = this.ctx.currentTime;
    for (const lane of this.lanes) {
      const value = this.audible(lane) ? dbToGain(lane.db) : 0;
      lane.gain.gain.cancelScheduledValues(now);
      // The value setter takes effect at once (and reads back at once).
      lane.gain.gain.value = value;
    }
  }

  setVolume(i, db) { this.lanes[i].db = db; this.applyGains(); }
  toggleMute(i) { this.lanes[i].muted = !this.lanes[i].muted; this.applyGains(); }
  toggleSolo(i) { this.lanes[i].soloed = !this.lanes[i].soloed; this.applyGains(); }

  /** The selection to mix: the stems heard, with their volumes. */
  selection() {
    return this.lanes.filter((l) => this.audible(l)).map((l) => ({ track_id: l.trackId, gain_db: l.db }));
  }

  /** Stops and lets go of the audio (leaving the song). */
  close() {
    this.stopSources();
    this.playing = false;
    if (this.ctx) this.ctx.close();
    this.ctx = null;
    this.lanes = [];
  }
}
