#!/usr/bin/env bash
# Makes the committed audio fixtures in libs/testkit/fixtures/ that dme cannot encode itself,
# from the test song generator's own output (libs/testkit/src/song.rs): the generator writes a
# 16-bit WAV, ffmpeg encodes it. Tests only read the committed files, so neither CI nor a fresh
# clone needs ffmpeg; run this again only when the generator or the list below changes, and
# update the specs in libs/testkit/fixtures/README.md and the tests that read them.
#
# Made with: ffmpeg 5.1.9-0+deb12u1 (Debian 12 package `ffmpeg`, built-in `aac` encoder),
# libvorbis 1.3.7-1 (Debian 12). Install: apt-get install -y ffmpeg
#
# Usage: scripts/make_fixtures.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/libs/testkit/fixtures"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
command -v ffmpeg >/dev/null || { echo "make_fixtures: ffmpeg is not installed" >&2; exit 1; }

# song <seconds> <rate> <seed> <wav>: the generator's song as 16-bit WAV.
song() {
  cargo run -q -p dme-testkit --example write_song -- "$@"
}

# Bit-exact flags keep ffmpeg's version string out of the files; the title tags let the tests
# cover tag reading in Vorbis comments and MP4 atoms.
encode() {
  local wav=$1
  shift
  ffmpeg -hide_banner -loglevel error -y -i "$wav" \
    -map_metadata -1 -fflags +bitexact -flags:a +bitexact "$@"
}

# OGG Vorbis: 3 s of 44.1 kHz stereo, seed 2, VBR quality 3 (about 110 kbit/s).
song 3 44100 2 "$work/vorbis.wav"
encode "$work/vorbis.wav" -c:a libvorbis -q:a 3 \
  -metadata title="dme fixture vorbis" -metadata artist="dme testkit" "$out/song-vorbis.ogg"

# AAC-LC in M4A: 3 s of 48 kHz stereo, seed 3, 112 kbit/s (48 kHz also covers resampling);
# the index (moov) first, as streamed files have it, so the fuzz seed made of its head parses.
song 3 48000 3 "$work/aac.wav"
encode "$work/aac.wav" -c:a aac -b:a 112k -movflags +faststart \
  -metadata title="dme fixture aac" -metadata artist="dme testkit" "$out/song-aac.m4a"

ls -l "$out"
