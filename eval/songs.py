"""Ground-truth songs for the quality harness: four known stems per song, summed to the mix.

Two sets, both 44.1 kHz stereo, both made here from fixed seeds (no downloads):

* ``synthetic``: stems synthesised with numpy (`synth_song`). Drum hits (kick, snare, closed and
  open hi-hat, crash), a bass line on the chord roots, chords that are side-panned or wide
  (detuned left against right), and a centre-panned voice-like melody: harmonics shaped by
  vowel formants, with delayed vibrato and a short breath noise at each onset.
* ``midi``: MIDI written here with mido (`midi_song`), rendered one stem at a time with
  fluidsynth and the FluidR3 General MIDI soundfont (Debian's ``fluidsynth`` and
  ``fluid-soundfont-gm``). Drums on channel 10, a bass program, piano/guitar/strings for
  *other*, and a centre-panned lead (choir, voice or saxophone) as *vocals*.

Each song is returned as ``(mix, stems)``: float64 arrays ``[2, T]``, with ``mix`` exactly the
sum of the four stems, scaled together so the mix peaks at ``PEAK``.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile

import numpy as np

SR = 44100
SOURCES = ["drums", "bass", "other", "vocals"]
PEAK = 0.9
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"


# ---------------------------------------------------------------------------------------------
# WAV files (float32 out; int16/24/32 and float32 in, as fluidsynth and dme write them)


def write_wav_f32(path: str, audio: np.ndarray) -> None:
    """Writes ``audio`` [channels, T] as an IEEE-float 32-bit WAV."""
    data = np.ascontiguousarray(audio.T, dtype="<f4").tobytes()
    ch = audio.shape[0]
    fmt = struct.pack("<HHIIHH", 3, ch, SR, SR * ch * 4, ch * 4, 32)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE")
        f.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
        f.write(b"data" + struct.pack("<I", len(data)) + data)


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Parses a PCM or IEEE-float WAV; returns float64 [channels, T] and the sample rate."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos, fmt, samples = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            tag, ch, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the real tag starts the sub-format GUID
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, ch, rate, bits)
        elif cid == b"data":
            samples = body
        pos += 8 + size + (size & 1)
    if fmt is None or samples is None:
        raise ValueError("WAV without fmt or data chunk")
    tag, ch, rate, bits = fmt
    if tag == 3 and bits == 32:
        x = np.frombuffer(samples, dtype="<f4").astype(np.float64)
    elif tag == 3 and bits == 64:
        x = np.frombuffer(samples, dtype="<f8").copy()
    elif tag == 1 and bits == 16:
        x = np.frombuffer(samples, dtype="<i2") / 32768.0
    elif tag == 1 and bits == 24:
        b = np.frombuffer(samples, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)
    elif tag == 1 and bits == 32:
        x = np.frombuffer(samples, dtype="<i4") / float(1 << 31)
    else:
        raise ValueError(f"unsupported WAV format tag {tag} with {bits} bits")
    n = len(x) // ch
    return x[: n * ch].reshape(n, ch).T.copy(), rate


# ---------------------------------------------------------------------------------------------
# Synthetic set


def _midi_hz(m):
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69) / 12)


def _env(n, attack, release):
    """Linear attack and release ramps over n samples (no clicks)."""
    e = np.ones(n)
    a = min(n, max(1, int(attack * SR)))
    r = min(n, max(1, int(release * SR)))
    e[:a] *= np.linspace(0, 1, a)
    e[n - r :] *= np.linspace(1, 0, r)
    return e


def _band_noise(rng, n, lo, hi):
    """White noise band-limited to [lo, hi] Hz by zeroing FFT bins."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec[(f < lo) | (f > hi)] = 0
    y = np.fft.irfft(spec, n)
    return y / (np.std(y) + 1e-12)


def _add(dst, t0, sig, gains):
    """Adds mono ``sig`` at sample ``t0`` with per-channel ``gains`` (clipped at the end)."""
    n = min(len(sig), dst.shape[1] - t0)
    if n > 0:
        dst[:, t0 : t0 + n] += np.asarray(gains)[:, None] * sig[:n]


# Vowel formants (F1, F2, F3 in Hz) of a sung voice, and their bandwidths.
_VOWELS = [(800, 1150, 2900), (400, 1700, 2600), (300, 2100, 2950), (480, 850, 2700), (350, 700, 2500)]
_BANDWIDTHS = (90.0, 110.0, 160.0)
_FORMANT_GAINS = (1.0, 0.6, 0.3)

_MAJOR = [0, 2, 4, 5, 7, 9, 11]
_MINOR = [0, 2, 3, 5, 7, 8, 10]
# Chord progressions as scale degrees (0-based).
_PROGRESSIONS = [[0, 5, 3, 4], [0, 3, 4, 3], [5, 3, 0, 4], [0, 4, 5, 3]]


def _triad(scale, root, degree):
    """MIDI notes of the diatonic triad on ``degree`` above ``root``."""
    out = []
    for k in (0, 2, 4):
        d = degree + k
        out.append(root + scale[d % 7] + 12 * (d // 7))
    return out


def synth_song(seed: int, seconds: float):
    """One synthetic song; everything (tempo, key, patterns, panning) comes from ``seed``."""
    rng = np.random.default_rng(seed)
    T = int(seconds * SR)
    stems = {s: np.zeros((2, T)) for s in SOURCES}
    bpm = float(rng.uniform(88, 128))
    beat = 60.0 / bpm
    step = beat / 4  # a sixteenth
    key = int(rng.integers(0, 12))
    scale = _MAJOR if rng.random() < 0.5 else _MINOR
    prog = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    n_bars = int(np.ceil(seconds / (4 * beat)))
    chord_of_bar = [prog[b % len(prog)] for b in range(n_bars)]

    # ---- drums: kick pattern over 16 sixteenths, snare on 2 and 4, hats on 8ths or 16ths
    kick_patterns = [[0, 8], [0, 7, 8], [0, 6, 10], [0, 3, 8, 11]]
    kicks = kick_patterns[int(rng.integers(len(kick_patterns)))]
    hat_every = 1 if rng.random() < 0.4 else 2
    hat_proto = _band_noise(rng, int(0.08 * SR), 7000, 16000)
    open_proto = _band_noise(rng, int(0.4 * SR), 6000, 16000)
    snare_noise = _band_noise(rng, int(0.3 * SR), 1500, 9000)
    crash = np.stack([_band_noise(rng, int(2.0 * SR), 4000, 16000) for _ in range(2)])
    d = stems["drums"]
    for bar in range(n_bars):
        for s in range(16):
            t0 = int((bar * 16 + s) * step * SR)
            if t0 >= T:
                break
            vel = 0.85 + 0.15 * rng.random()
            if s in kicks:
                n = int(0.35 * SR)
                tt = np.arange(n) / SR
                f = 48 + 90 * np.exp(-tt / 0.025)
                k = np.sin(2 * np.pi * np.cumsum(f) / SR) * np.exp(-tt / 0.12)
                k[: int(0.003 * SR)] += 0.5 * rng.standard_normal(int(0.003 * SR))
                _add(d, t0, 0.9 * vel * k, [1.0, 1.0])
            if s in (4, 12):
                n = len(snare_noise)
                tt = np.arange(n) / SR
                sn = 0.6 * snare_noise * np.exp(-tt / 0.07) + 0.8 * np.sin(2 * np.pi * 185 * tt) * np.exp(-tt / 0.05)
                _add(d, t0, 0.45 * vel * sn, [0.95, 1.0])
            elif s == 14 and rng.random() < 0.3:  # ghost note
                tt = np.arange(len(snare_noise)) / SR
                _add(d, t0, 0.12 * snare_noise * np.exp(-tt / 0.04), [0.95, 1.0])
            if s % hat_every == 0:
                if s == 14 and bar % 2 == 1:  # an open hat now and then
                    tt = np.arange(len(open_proto)) / SR
                    _add(d, t0, 0.14 * vel * open_proto * np.exp(-tt / 0.12), [0.7, 1.0])
                else:
                    tt = np.arange(len(hat_proto)) / SR
                    accent = 1.0 if s % 4 == 0 else 0.7
                    _add(d, t0, 0.12 * vel * accent * hat_proto * np.exp(-tt / 0.018), [0.7, 1.0])
        t0 = int(bar * 16 * step * SR)
        if bar % 8 == 0 and t0 < T:  # a wide crash every 8 bars
            tt = np.arange(crash.shape[1]) / SR
            n = min(crash.shape[1], T - t0)
            d[:, t0 : t0 + n] += (0.12 * crash * np.exp(-tt / 0.6))[:, :n]

    # ---- bass: roots, fifths and octaves on 8ths, plucked, 40-110 Hz
    b = stems["bass"]
    bass_root = 28 + key  # E1 .. D#2
    figures = [[0, 0, 7, 0, 12, 0, 7, 0], [0, 0, 0, 0, 0, 0, 7, 5], [0, 12, 0, 7, 0, 12, 0, 10]]
    fig = figures[int(rng.integers(len(figures)))]
    for bar in range(n_bars):
        root = bass_root + scale[chord_of_bar[bar]]
        for e in range(8):
            t0 = int((bar * 8 + e) * 2 * step * SR)
            if t0 >= T:
                break
            n = int(2 * step * SR * 0.95)
            f = float(_midi_hz(root + fig[e]))
            tt = np.arange(n) / SR
            tone = sum(np.sin(2 * np.pi * h * f * tt) / h**1.3 for h in range(1, 9) if h * f < 1500)
            _add(b, t0, 0.45 * tone * np.exp(-tt / 0.5) * _env(n, 0.004, 0.02), [1.0, 1.0])

    # ---- other: chords, side-panned voices or wide (left and right detuned) pads
    o = stems["other"]
    wide = bool(rng.random() < 0.5)
    for bar in range(n_bars):
        t0 = int(bar * 16 * step * SR)
        if t0 >= T:
            break
        n = int(16 * step * SR)
        tt = np.arange(n) / SR
        notes = _triad(scale, 52 + key % 6, chord_of_bar[bar])
        env = _env(n, 0.08, 0.15)
        for j, m in enumerate(notes):
            f = float(_midi_hz(m))
            if wide:
                cents = 6.0 + 3 * j
                fl, fr = f * 2 ** (-cents / 1200), f * 2 ** (cents / 1200)
                left = sum((0.55**h) * np.sin(2 * np.pi * h * fl * tt + j) for h in range(1, 7))
                right = sum((0.55**h) * np.sin(2 * np.pi * h * fr * tt + 2 * j) for h in range(1, 7))
                o[:, t0 : t0 + n] += (0.16 * np.stack([left, right]) * env)[:, : T - t0]
            else:
                tone = sum((0.55**h) * np.sin(2 * np.pi * h * f * tt + j) for h in range(1, 7))
                pan = [1.0, 0.25] if j % 2 == 0 else [0.3, 1.0]
                _add(o, t0, 0.16 * tone * env, pan)

    # ---- vocals: centred melody with formants, vibrato, and a breath at each onset
    v = stems["vocals"]
    vroot = 60 + key % 7
    pent = [0, 2, 4, 7, 9] if scale is _MAJOR else [0, 3, 5, 7, 10]
    lengths = [2, 2, 4, 4, 6, 8]  # in sixteenths
    pos = int(rng.integers(0, 4)) * 4
    total = int(seconds / step)
    idx = int(rng.integers(0, 5))
    while pos < total:
        if rng.random() < 0.15:  # a rest
            pos += 4
            continue
        ln = lengths[int(rng.integers(len(lengths)))]
        idx = int(np.clip(idx + rng.integers(-2, 3), 0, 9))
        m = vroot + pent[idx % 5] + 12 * (idx // 5)
        t0 = int(pos * step * SR)
        n = int(ln * step * SR * 0.92)
        tt = np.arange(n) / SR
        f0 = float(_midi_hz(m))
        rate = 5.0 + rng.random()
        depth = 25 + 20 * rng.random()  # cents
        vib = (depth / 1200) * np.sin(2 * np.pi * rate * tt) * np.clip((tt - 0.15) / 0.2, 0, 1)
        ph = 2 * np.pi * np.cumsum(f0 * 2**vib) / SR
        formants = _VOWELS[int(rng.integers(len(_VOWELS)))]
        tone = np.zeros(n)
        for h in range(1, 40):
            fh = h * f0
            if fh > 7000:
                break
            amp = sum(g / (1 + ((fh - F) / B) ** 2) for F, B, g in zip(formants, _BANDWIDTHS, _FORMANT_GAINS))
            tone += (amp + 0.02) / h**0.5 * np.sin(h * ph)
        tone /= np.max(np.abs(tone)) + 1e-12
        sig = 0.35 * tone * _env(n, 0.04, 0.08)
        nb = int(0.03 * SR)
        breath = _band_noise(rng, nb, 2000, 8000) * np.linspace(1, 0, nb)
        sig[:nb] += 0.03 * breath
        _add(v, t0, sig, [1.0, 1.0])
        pos += ln

    return _finish(stems)


def _finish(stems, levels=None):
    """Scales the stems to the given RMS levels, then together so the mix peaks at PEAK."""
    if levels:
        for s, level in levels.items():
            rms = np.sqrt(np.mean(stems[s] ** 2))
            if rms > 0:
                stems[s] = stems[s] * (level / rms)
    mix = sum(stems[s] for s in SOURCES)
    g = PEAK / np.max(np.abs(mix))
    return mix * g, {s: stems[s] * g for s in SOURCES}


SYNTH_SONGS = [("synth-a", 11, 24.0), ("synth-b", 12, 27.0), ("synth-c", 13, 30.0)]


def synthetic_set():
    """Yields ``(name, mix, stems)`` for the synthetic set."""
    for name, seed, seconds in SYNTH_SONGS:
        mix, stems = synth_song(seed, seconds)
        # Comparable loudness: drums and vocals slightly in front, as in a pop mix.
        mix, stems = _finish(stems, {"drums": 0.12, "bass": 0.10, "other": 0.07, "vocals": 0.09})
        yield name, mix, stems


# ---------------------------------------------------------------------------------------------
# MIDI set

TPB = 480  # ticks per beat

# name, bpm, bars, key (MIDI root of the bass), minor?, programs and pans.
#   other: list of (program, pan 0-127), rendered together as the "other" stem
#   vocals: (program, pan); 52 Choir Aahs, 53 Voice Oohs, 65 Alto Sax, 85 Lead 6 (voice)
MIDI_SONGS = [
    dict(name="midi-pop", bpm=100, bars=10, root=33, minor=False, bass=33, other=[(0, 40), (48, 92)], vocals=(53, 64), seed=21),
    dict(name="midi-ballad", bpm=76, bars=8, root=31, minor=True, bass=32, other=[(24, 30), (4, 100)], vocals=(52, 64), seed=22),
    dict(name="midi-funk", bpm=112, bars=12, root=28, minor=True, bass=38, other=[(27, 28), (49, 104)], vocals=(65, 64), seed=23),
]


def _midi_parts(song):
    """The song's notes: {stem: [(channel, start_tick, end_tick, note, velocity)]}."""
    rng = np.random.default_rng(song["seed"])
    scale = _MINOR if song["minor"] else _MAJOR
    prog = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    bars, root = song["bars"], song["root"]
    bar_t = 4 * TPB
    s16 = TPB // 4
    parts = {s: [] for s in SOURCES}
    for bar in range(bars):
        deg = prog[bar % len(prog)]
        t_bar = bar * bar_t
        # drums (channel 10 = index 9): kick, snare, hats, crash on the first bar of 4, a tom fill
        kicks = [0, 8] if bar % 2 == 0 else [0, 6, 10]
        for s in range(16):
            t = t_bar + s * s16
            if s in kicks:
                parts["drums"].append((9, t, t + s16, 36, 110))
            if s in (4, 12):
                parts["drums"].append((9, t, t + s16, 38, 100))
            if s % 2 == 0:
                note = 46 if (s == 14 and bar % 2 == 1) else 42
                parts["drums"].append((9, t, t + s16, note, 70 + (20 if s % 4 == 0 else 0)))
        if bar % 4 == 0:
            parts["drums"].append((9, t_bar, t_bar + TPB, 49, 90))
        if bar % 4 == 3:
            for k, tom in enumerate((50, 47, 45, 43)):
                t = t_bar + 12 * s16 + k * s16
                parts["drums"].append((9, t, t + s16, tom, 95))
        # bass: root/fifth/octave eighths
        broot = root + scale[deg]
        for e, iv in enumerate([0, 0, 7, 0, 12, 0, 7, 5]):
            t = t_bar + e * 2 * s16
            parts["bass"].append((0, t, t + 2 * s16 - 20, broot + iv, 95))
        # other: two parts. Part 1 plays broken chords in eighths, part 2 holds the chord.
        chord = _triad(scale, root + 24, deg)
        for e in range(8):
            t = t_bar + e * 2 * s16
            n = chord[[0, 1, 2, 1][e % 4]] + 12
            parts["other"].append((1, t, t + 2 * s16, n, 72))
        for n in chord:
            parts["other"].append((2, t_bar, t_bar + bar_t - 10, n, 60))
    # vocals: a legato melody over the bars, with rests at the end of every second bar
    pent = [0, 3, 5, 7, 10] if song["minor"] else [0, 2, 4, 7, 9]
    vroot = root + 24
    t, idx, end = 0, 2, bars * bar_t
    while t < end:
        ln = [2, 2, 4, 4, 6, 8][int(rng.integers(6))] * s16
        if (t // bar_t) % 2 == 1 and (t % bar_t) + ln > bar_t - 4 * s16:
            t = (t // bar_t + 1) * bar_t  # breathe before the next phrase
            continue
        idx = int(np.clip(idx + rng.integers(-2, 3), 0, 9))
        note = vroot + pent[idx % 5] + 12 * (idx // 5)
        parts["vocals"].append((3, t, min(t + ln - 10, end), note, 100))
        t += ln
    return parts


def _write_midi(path, song, stem, notes):
    import mido

    mf = mido.MidiFile(type=1, ticks_per_beat=TPB)
    end = song["bars"] * 4 * TPB + 2 * TPB  # two beats of tail for releases and reverb
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(song["bpm"]), time=0))
    meta.append(mido.MetaMessage("end_of_track", time=end))
    mf.tracks.append(meta)
    events = []  # (tick, order, message)
    setup = {"drums": [(9, None, 64, 30)], "bass": [(0, song["bass"], 64, 10)], "vocals": [(3, song["vocals"][0], song["vocals"][1], 30)]}
    setup["other"] = [(1, song["other"][0][0], song["other"][0][1], 40), (2, song["other"][1][0], song["other"][1][1], 40)]
    for ch, program, pan, reverb in setup[stem]:
        if program is not None:
            events.append((0, 0, mido.Message("program_change", channel=ch, program=program)))
        events.append((0, 0, mido.Message("control_change", channel=ch, control=7, value=100)))
        events.append((0, 0, mido.Message("control_change", channel=ch, control=10, value=pan)))
        events.append((0, 0, mido.Message("control_change", channel=ch, control=91, value=reverb)))
        events.append((0, 0, mido.Message("control_change", channel=ch, control=93, value=0)))
    for ch, t0, t1, note, vel in notes:
        events.append((t0, 2, mido.Message("note_on", channel=ch, note=note, velocity=vel)))
        events.append((t1, 1, mido.Message("note_off", channel=ch, note=note, velocity=0)))
    events.sort(key=lambda e: (e[0], e[1]))
    track = mido.MidiTrack()
    now = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=end - now))
    mf.tracks.append(track)
    mf.save(path)


def fluidsynth_version() -> str:
    out = subprocess.run(["fluidsynth", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def midi_available() -> str | None:
    """None when fluidsynth and the soundfont are installed, otherwise what is missing."""
    if shutil.which("fluidsynth") is None:
        return "fluidsynth is not installed (apt-get install -y fluidsynth fluid-soundfont-gm)"
    if not os.path.exists(SOUNDFONT):
        return f"{SOUNDFONT} is missing (apt-get install -y fluid-soundfont-gm)"
    return None


def render(mid: str, wav: str) -> np.ndarray:
    """Renders a MIDI file with fluidsynth (no audio device, chorus off, reverb as the file asks)."""
    cmd = ["fluidsynth", "-n", "-i", "-q", "-C", "0", "-R", "1", "-g", "0.5", "-r", str(SR),
           "-T", "wav", "-O", "float", "-F", wav, SOUNDFONT, mid]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(wav, "rb") as f:
        x, rate = read_wav(f.read())
    if rate != SR or x.shape[0] != 2:
        raise RuntimeError(f"fluidsynth wrote {x.shape[0]} channels at {rate} Hz")
    return x


def midi_song(song, workdir: str):
    """Writes one MIDI file per stem, renders each, pads them to one length and sums them."""
    parts = _midi_parts(song)
    stems = {}
    for s in SOURCES:
        mid = os.path.join(workdir, f"{song['name']}-{s}.mid")
        _write_midi(mid, song, s, parts[s])
        stems[s] = render(mid, mid[:-4] + ".wav")
    # fluidsynth renders each file until its last voice has died away, so the stems differ in
    # length: pad them to one length, then cut all at the song's end plus a short tail (the same
    # fade on every stem keeps the mix their exact sum).
    T = max(x.shape[1] for x in stems.values())
    stems = {s: np.pad(x, ((0, 0), (0, T - x.shape[1]))) for s, x in stems.items()}
    end = min(T, int(((song["bars"] * 4 + 2) * 60.0 / song["bpm"] + 0.5) * SR))
    fade = np.ones(end)
    fade[end - int(0.25 * SR) :] = np.linspace(1, 0, int(0.25 * SR))
    stems = {s: x[:, :end] * fade for s, x in stems.items()}
    return _finish(stems)


def midi_set(workdir: str | None = None):
    """Yields ``(name, mix, stems)`` for the MIDI set."""
    with tempfile.TemporaryDirectory(prefix="dme-eval-midi-") as tmp:
        for song in MIDI_SONGS:
            mix, stems = midi_song(song, workdir or tmp)
            yield song["name"], mix, stems
