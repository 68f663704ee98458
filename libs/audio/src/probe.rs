//! Probing: recognise the container and codec, read tags, and work out the duration without
//! decoding the whole file.

use std::fs::File;
use std::path::Path;

use symphonia::core::codecs::{
    CodecParameters, CodecType, Decoder, DecoderOptions, CODEC_TYPE_AAC, CODEC_TYPE_AC4,
    CODEC_TYPE_ALAC, CODEC_TYPE_ATRAC1, CODEC_TYPE_ATRAC3, CODEC_TYPE_ATRAC3PLUS,
    CODEC_TYPE_ATRAC9, CODEC_TYPE_DCA, CODEC_TYPE_EAC3, CODEC_TYPE_FLAC, CODEC_TYPE_MONKEYS_AUDIO,
    CODEC_TYPE_MP1, CODEC_TYPE_MP2, CODEC_TYPE_MP3, CODEC_TYPE_MUSEPACK, CODEC_TYPE_NULL,
    CODEC_TYPE_OPUS, CODEC_TYPE_SPEEX, CODEC_TYPE_TTA, CODEC_TYPE_VORBIS, CODEC_TYPE_WAVPACK,
    CODEC_TYPE_WMA,
};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader, Packet};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::{MetadataOptions, MetadataRevision, StandardTagKey};
use symphonia::core::probe::Hint;

use crate::source::{is_known_non_audio, open_file, sniff_container};
use crate::{guard_panics, AudioError};

/// Sample rates we accept, in Hz. Below 1 kHz nothing musical survives and the resampler's output
/// chunks would balloon (1 Hz -> 44.1 kHz is a 44 100x expansion); above 768 kHz (the highest
/// rate any DAC ships) the header is almost certainly garbage.
pub(crate) const SAMPLE_RATE_RANGE: std::ops::RangeInclusive<u32> = 1_000..=768_000;

/// How many consecutive undecodable packets are tolerated before the stream is declared corrupt.
/// An MP3 frame is 26 ms, so 100 bad packets in a row is ~2.6 s of garbage with no valid audio in
/// between; symphonia's demuxers resync over plain junk bytes without emitting packets at all,
/// so real files with damaged regions stay far below this.
pub(crate) const MAX_CONSECUTIVE_BAD_PACKETS: u32 = 100;

/// Longest packet, in frames, counted by the probe and concealed by the decoder when it cannot be
/// decoded: above every real codec's packet (MP3 1152, AAC 2048, Vorbis 8192, FLAC 65 535), so
/// real packets count in full, while a garbage duration in a damaged container cannot add hours.
pub(crate) const MAX_PACKET_FRAMES: u64 = 65_536;

/// Extensions of MPEG audio files, used to recognise MPEG audio that does not start with a
/// frame sync or an ID3v2 tag.
const MPEG_EXTENSIONS: &[&str] = &["mp3", "mp2", "mp1", "mpa", "mpga"];

/// What [`probe_path`] learns about a file without decoding all of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Codec short name as symphonia spells it: `"mp3"`, `"flac"`, `"pcm_s16le"`, `"vorbis"`,
    /// `"aac"`, ...
    pub codec: String,
    /// Container, best effort from the magic bytes: `"mp3"`, `"wav"`, `"flac"`, `"ogg"`,
    /// `"mp4"`, ...
    pub container: String,
    /// Source sample rate in Hz.
    pub sample_rate: u32,
    /// Source channel count.
    pub channels: u16,
    /// Samples per channel at `sample_rate` (after gapless trimming of encoder delay and padding
    /// where the file records them).
    pub frames: u64,
    /// `frames / sample_rate`, in seconds.
    pub duration_s: f64,
    /// Track title from the tags, if any.
    pub title: Option<String>,
    /// Track artist from the tags, if any.
    pub artist: Option<String>,
}

/// Probe a file: container, codec, rate, channels, duration and title/artist tags (ID3v2, ID3v1,
/// Vorbis comments, MP4 atoms, RIFF INFO) without decoding the whole file.
///
/// The frame count comes from the container when it records one. MPEG audio (MP1/2/3) headers
/// only give a bitrate-based estimate, and some containers give nothing, so in those cases every
/// packet is demuxed (not decoded) and the packet durations are summed. At most a handful of
/// packets are decoded, only when the container does not state the channel count.
///
/// `ext_hint` is the file's extension (`"mp3"`, with or without the dot) when known; it only
/// helps symphonia pick a reader faster.
///
/// # Errors
///
/// [`AudioError::Empty`] for a zero-byte file, [`AudioError::NotAudio`] when no audio format is
/// recognised, [`AudioError::UnsupportedCodec`] for a codec (or sample rate) we cannot decode,
/// [`AudioError::BadHeader`] for a header value no audio can have (a sample rate of 0, say),
/// [`AudioError::Corrupt`] when headers or packets are broken,
/// [`AudioError::DecoderPanicked`] when the decoder panics on malformed data,
/// [`AudioError::NoSamples`] when the stream holds no packets, [`AudioError::Io`] when reading
/// fails.
pub fn probe_path(path: &Path, ext_hint: Option<&str>) -> Result<Probe, AudioError> {
    guard_panics(|| probe_inner(path, ext_hint))
}

pub(crate) fn probe_inner(path: &Path, ext_hint: Option<&str>) -> Result<Probe, AudioError> {
    let mut media = open_media(path, ext_hint)?;
    let codec = media.codec;
    // MPEG headers only give a bitrate-based estimate (or, with a Xing tag, a count that junk in
    // the file makes wrong), so MPEG audio is always counted packet by packet.
    let mpeg_audio = [CODEC_TYPE_MP1, CODEC_TYPE_MP2, CODEC_TYPE_MP3].contains(&codec);
    let known_frames = if mpeg_audio { None } else { media.n_frames };
    let mut channels = media.channels;

    let frames = match known_frames {
        Some(frames) if channels.is_some() => frames,
        _ => {
            // Walk the packets: sum their durations (when the container gave no frame count) and
            // decode only until the channel count is known.
            let mut counted: u64 = 0;
            let mut packets: u64 = 0;
            let mut bad: u32 = 0;
            while let Some(packet) = next_track_packet(&mut *media.format, media.track_id)? {
                packets += 1;
                counted = counted.saturating_add(packet.dur.min(MAX_PACKET_FRAMES));
                if channels.is_none() {
                    channels = decode_channel_count(&mut *media.decoder, &packet, &mut bad)?;
                }
                if known_frames.is_some() && channels.is_some() {
                    break;
                }
            }
            if channels.is_none() {
                return Err(if packets == 0 {
                    AudioError::NoSamples
                } else {
                    AudioError::Corrupt("no packet could be decoded".into())
                });
            }
            let (delay, padding) = media.trim;
            known_frames.unwrap_or(counted.saturating_sub(u64::from(delay) + u64::from(padding)))
        }
    };
    let channels = channels.unwrap_or(0);

    let (mut title, mut artist) = (media.title.take(), media.artist.take());
    // ID3v1 only exists on MPEG audio; elsewhere "TAG" in the last bytes is just data.
    if mpeg_audio && (title.is_none() || artist.is_none()) {
        if let Some((v1_title, v1_artist)) = read_id3v1(path)? {
            title = title.or(v1_title);
            artist = artist.or(v1_artist);
        }
    }

    Ok(Probe {
        codec: media.codec_name,
        container: media.container,
        sample_rate: media.sample_rate,
        channels,
        frames,
        duration_s: frames as f64 / f64::from(media.sample_rate),
        title,
        artist,
    })
}

/// A file opened down to a ready decoder for its audio track.
pub(crate) struct OpenedMedia {
    pub format: Box<dyn FormatReader>,
    pub decoder: Box<dyn Decoder>,
    pub track_id: u32,
    pub codec: CodecType,
    pub codec_name: String,
    pub container: String,
    pub sample_rate: u32,
    /// Channel count stated by the container, if it states one.
    pub channels: Option<u16>,
    /// Frame count stated by the container, if it states one.
    pub n_frames: Option<u64>,
    /// Encoder delay and padding (in frames) that the caller must trim from the decoded stream
    /// itself: set for MPEG audio, where symphonia's own gapless mode is not used (see
    /// [`open_media`]); `(0, 0)` otherwise.
    pub trim: (u32, u32),
    pub title: Option<String>,
    pub artist: Option<String>,
}

/// Open `path` with symphonia, pick the audio track and build its decoder. Must run inside
/// [`guard_panics`].
///
/// # Errors
///
/// As [`probe_path`].
pub(crate) fn open_media(path: &Path, ext_hint: Option<&str>) -> Result<OpenedMedia, AudioError> {
    open_media_with(path, ext_hint, false)
}

/// [`open_media`], optionally forcing symphonia's gapless mode on.
///
/// Gapless playback must trim encoder delay and padding. Symphonia's MP3 reader trims the end by
/// packet timestamps against the frame count in the LAME tag, so every false frame synced inside
/// junk in the middle of a file pushes a real frame off the end. For MPEG audio we therefore
/// leave symphonia's gapless mode off and return the LAME delay and padding in
/// [`OpenedMedia::trim`], to be trimmed from the decoded samples themselves. Other formats
/// (Vorbis/Opus pre-skip, for instance) use symphonia's gapless mode.
fn open_media_with(
    path: &Path,
    ext_hint: Option<&str>,
    force_gapless: bool,
) -> Result<OpenedMedia, AudioError> {
    let opened = probe_format(path, ext_hint, force_gapless)?;
    let (track_id, params) = audio_track(&*opened.format)?;
    let codec_name = codec_name(params.codec);
    let is_mpeg = [CODEC_TYPE_MP1, CODEC_TYPE_MP2, CODEC_TYPE_MP3].contains(&params.codec);
    if !opened.gapless && !is_mpeg {
        // Looked like MPEG audio but is not: symphonia's gapless handling is right for it.
        return open_media_with(path, ext_hint, true);
    }
    let trim = if opened.gapless {
        (0, 0)
    } else {
        (params.delay.unwrap_or(0), params.padding.unwrap_or(0))
    };
    let sample_rate = supported_rate(&params, &codec_name)?;
    let decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| match e {
            SymphoniaError::Unsupported(_) => AudioError::UnsupportedCodec(codec_name.clone()),
            other => map_symphonia_error(other, opened.file_len),
        })?;
    let container = opened
        .sniffed
        .or_else(|| container_from_codec(params.codec))
        .map(str::to_owned)
        .or(opened.ext)
        .unwrap_or_else(|| "unknown".to_owned());
    Ok(OpenedMedia {
        format: opened.format,
        decoder,
        track_id,
        codec: params.codec,
        codec_name,
        container,
        sample_rate,
        channels: stated_channels(&params),
        n_frames: params.n_frames,
        trim,
        title: opened.title,
        artist: opened.artist,
    })
}

/// A file whose format symphonia has recognised, before a track is chosen.
struct ProbedFormat {
    format: Box<dyn FormatReader>,
    /// Container name from the magic bytes, if they were recognised.
    sniffed: Option<&'static str>,
    /// The extension hint, lowercase and without the dot.
    ext: Option<String>,
    /// Whether symphonia's gapless mode is on (see [`open_media_with`]).
    gapless: bool,
    /// File length in bytes (past any skipped ID3v2 tags), for error messages.
    file_len: u64,
    title: Option<String>,
    artist: Option<String>,
}

/// Open `path`, reject known non-audio, and let symphonia's probe pick a format reader, with
/// gapless mode on unless the file looks like MPEG audio (or `force_gapless`).
fn probe_format(
    path: &Path,
    ext_hint: Option<&str>,
    force_gapless: bool,
) -> Result<ProbedFormat, AudioError> {
    let opened = open_file(path)?;
    if let Some(what) = is_known_non_audio(&opened.head) {
        return Err(AudioError::NotAudio(what.into()));
    }
    let sniffed = sniff_container(&opened.head);
    let file_len = opened.len;
    let stream =
        MediaSourceStream::new(Box::new(opened.source), MediaSourceStreamOptions::default());
    let mut hint = Hint::new();
    let ext = ext_hint.map(|e| e.trim_start_matches('.').to_ascii_lowercase());
    if let Some(ext) = &ext {
        hint.with_extension(ext);
    }
    let looks_mpeg = match sniffed {
        Some(container) => container == "mp3",
        None => ext.as_deref().is_some_and(|e| MPEG_EXTENSIONS.contains(&e)),
    };
    // Gapless trimming drops encoder delay and padding, so decoded audio lines up with the
    // original recording and the frame count matches what was encoded.
    let gapless = force_gapless || !looks_mpeg;
    let format_options = FormatOptions {
        enable_gapless: gapless,
        ..FormatOptions::default()
    };
    let mut probed = symphonia::default::get_probe()
        .format(&hint, stream, &format_options, &MetadataOptions::default())
        .map_err(|e| match e {
            SymphoniaError::Unsupported(what) => AudioError::NotAudio(what.into()),
            other => map_symphonia_error(other, file_len),
        })?;
    let (mut title, mut artist) = (None, None);
    if let Some(mut metadata) = probed.metadata.get() {
        if let Some(revision) = metadata.skip_to_latest() {
            fill_tags(revision, &mut title, &mut artist);
        }
    }
    let mut format = probed.format;
    if let Some(revision) = format.metadata().skip_to_latest() {
        fill_tags(revision, &mut title, &mut artist);
    }
    Ok(ProbedFormat {
        format,
        sniffed,
        ext,
        gapless,
        file_len,
        title,
        artist,
    })
}

/// The default track if it has a codec, else the first track that has one.
fn audio_track(format: &dyn FormatReader) -> Result<(u32, CodecParameters), AudioError> {
    let track = format
        .default_track()
        .filter(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .or_else(|| {
            format
                .tracks()
                .iter()
                .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        })
        .ok_or_else(|| AudioError::NotAudio("no audio track".into()))?;
    Ok((track.id, track.codec_params.clone()))
}

/// The track's sample rate, when it states one inside [`SAMPLE_RATE_RANGE`].
fn supported_rate(params: &CodecParameters, codec_name: &str) -> Result<u32, AudioError> {
    let sample_rate = params
        .sample_rate
        .ok_or_else(|| AudioError::Corrupt("sample rate unknown".into()))?;
    if !SAMPLE_RATE_RANGE.contains(&sample_rate) {
        return Err(AudioError::UnsupportedCodec(format!(
            "{codec_name} at {sample_rate} Hz (supported: {} to {} Hz)",
            SAMPLE_RATE_RANGE.start(),
            SAMPLE_RATE_RANGE.end()
        )));
    }
    Ok(sample_rate)
}

/// The channel count the container states (as a channel mask or a layout), if any.
fn stated_channels(params: &CodecParameters) -> Option<u16> {
    params
        .channels
        .map(|c| c.count())
        .or_else(|| params.channel_layout.map(|l| l.into_channels().count()))
        .filter(|&c| c > 0)
        .map(|c| u16::try_from(c).unwrap_or(u16::MAX))
}

/// Next packet of `track_id`, or `None` at the end of the stream. Demuxer errors are skipped;
/// more than [`MAX_CONSECUTIVE_BAD_PACKETS`] of them in a row is corruption.
///
/// # Errors
///
/// [`AudioError::Corrupt`] after too many consecutive bad packets or on a fatal demuxer error,
/// [`AudioError::Io`] when reading fails.
pub(crate) fn next_track_packet(
    format: &mut dyn FormatReader,
    track_id: u32,
) -> Result<Option<Packet>, AudioError> {
    let mut bad: u32 = 0;
    loop {
        match format.next_packet() {
            Ok(packet) if packet.track_id() == track_id => return Ok(Some(packet)),
            Ok(_) => continue,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(None)
            }
            // A chained stream (new OGG logical stream) or similar: we decode the first one only.
            Err(SymphoniaError::ResetRequired) => return Ok(None),
            Err(SymphoniaError::DecodeError(_)) => {
                bad += 1;
                if bad > MAX_CONSECUTIVE_BAD_PACKETS {
                    return Err(too_many_bad());
                }
            }
            Err(SymphoniaError::IoError(e)) => return Err(AudioError::Io(e)),
            Err(other) => return Err(corrupt(&other)),
        }
    }
}

pub(crate) fn too_many_bad() -> AudioError {
    AudioError::Corrupt(format!(
        "more than {MAX_CONSECUTIVE_BAD_PACKETS} consecutive undecodable packets"
    ))
}

/// Decode one packet only to learn the channel count. A decode error counts as a bad packet.
fn decode_channel_count(
    decoder: &mut dyn Decoder,
    packet: &Packet,
    bad: &mut u32,
) -> Result<Option<u16>, AudioError> {
    match decoder.decode(packet) {
        Ok(buffer) => {
            *bad = 0;
            let count = buffer.spec().channels.count();
            Ok((count > 0).then(|| u16::try_from(count).unwrap_or(u16::MAX)))
        }
        Err(SymphoniaError::DecodeError(_)) | Err(SymphoniaError::IoError(_)) => {
            *bad += 1;
            if *bad > MAX_CONSECUTIVE_BAD_PACKETS {
                return Err(too_many_bad());
            }
            Ok(None)
        }
        Err(SymphoniaError::Unsupported(what)) => Err(AudioError::UnsupportedCodec(what.into())),
        Err(other) => Err(corrupt(&other)),
    }
}

/// Map a symphonia error met while opening a file.
fn map_symphonia_error(e: SymphoniaError, file_len: u64) -> AudioError {
    match e {
        SymphoniaError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            AudioError::Corrupt(format!(
                "file ends before its first audio frame ({file_len} bytes)"
            ))
        }
        SymphoniaError::IoError(io) => AudioError::Io(io),
        SymphoniaError::Unsupported(what) => AudioError::UnsupportedCodec(what.into()),
        other => corrupt(&other),
    }
}

/// [`AudioError::Corrupt`] for a symphonia error, in words for the person who sent the file:
/// symphonia's "malformed stream: riff: invalid channel count" becomes "invalid channel count"
/// (its category and module prefixes name library internals).
pub(crate) fn corrupt(e: &SymphoniaError) -> AudioError {
    let message = match e {
        SymphoniaError::DecodeError(what) => what.rsplit(": ").next().unwrap_or(what).to_owned(),
        SymphoniaError::SeekError(_) => "the file cannot be read in order".to_owned(),
        SymphoniaError::LimitError(what) => format!("the file exceeds a decoder limit ({what})"),
        other => other.to_string(),
    };
    AudioError::Corrupt(message)
}

/// Short codec name: symphonia's own when it has a decoder, else a name for the codecs it can
/// recognise but not decode (so the 415 message says what the file was).
fn codec_name(codec: CodecType) -> String {
    if let Some(descriptor) = symphonia::default::get_codecs().get_codec(codec) {
        return descriptor.short_name.to_owned();
    }
    let name = match codec {
        CODEC_TYPE_OPUS => "opus",
        CODEC_TYPE_SPEEX => "speex",
        CODEC_TYPE_MUSEPACK => "musepack",
        CODEC_TYPE_EAC3 => "eac3",
        CODEC_TYPE_AC4 => "ac4",
        CODEC_TYPE_DCA => "dts",
        CODEC_TYPE_WMA => "wma",
        CODEC_TYPE_WAVPACK => "wavpack",
        CODEC_TYPE_MONKEYS_AUDIO => "ape",
        CODEC_TYPE_TTA => "tta",
        CODEC_TYPE_ATRAC1 | CODEC_TYPE_ATRAC3 | CODEC_TYPE_ATRAC3PLUS | CODEC_TYPE_ATRAC9 => {
            "atrac"
        }
        other => return format!("codec {other}"),
    };
    name.to_owned()
}

/// Container guess from the codec, for raw streams our magic-byte sniffing did not recognise
/// (an MP3 starting with junk, say).
fn container_from_codec(codec: CodecType) -> Option<&'static str> {
    match codec {
        CODEC_TYPE_MP3 => Some("mp3"),
        CODEC_TYPE_MP2 => Some("mp2"),
        CODEC_TYPE_MP1 => Some("mp1"),
        CODEC_TYPE_AAC => Some("aac"),
        CODEC_TYPE_FLAC => Some("flac"),
        CODEC_TYPE_VORBIS => Some("ogg"),
        CODEC_TYPE_ALAC => Some("mp4"),
        _ => None,
    }
}

/// Take the first non-empty title and artist found in a metadata revision, keeping values
/// already found.
fn fill_tags(revision: &MetadataRevision, title: &mut Option<String>, artist: &mut Option<String>) {
    for tag in revision.tags() {
        let slot = match tag.std_key {
            Some(StandardTagKey::TrackTitle) => &mut *title,
            Some(StandardTagKey::Artist) => &mut *artist,
            _ => continue,
        };
        if slot.is_none() {
            let value = tag.value.to_string();
            let value = value.trim_matches(|c: char| c.is_whitespace() || c == '\0');
            if !value.is_empty() {
                *slot = Some(value.to_owned());
            }
        }
    }
}

/// A title and an artist, either possibly missing.
type TitleArtist = (Option<String>, Option<String>);

/// Read the title and artist of an ID3v1 tag (symphonia 0.5 ignores ID3v1) with the `id3`
/// crate, which decodes the Latin-1 fields (cut at the first NUL) and appends an extended
/// `TAG+` title or artist when present. Padding spaces are trimmed; an empty field is `None`.
fn read_id3v1(path: &Path) -> Result<Option<TitleArtist>, AudioError> {
    let file = File::open(path)?;
    match id3::v1::Tag::read_from(file) {
        Ok(tag) => Ok(Some((non_empty(&tag.title), non_empty(&tag.artist)))),
        Err(id3::Error {
            kind: id3::ErrorKind::Io(e),
            ..
        }) => Err(AudioError::Io(e)),
        // A file too short for a tag, or without one. (Reading a v1 tag fails in no other way:
        // every byte pattern decodes.)
        Err(_) => Ok(None),
    }
}

/// A tag field without its padding, or `None` when nothing is left.
fn non_empty(field: &str) -> Option<String> {
    let text = field.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of 1000 zero bytes and an ID3v1 tag with these fields (at most 30 bytes each).
    fn with_id3v1(title: &[u8], artist: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let mut tag = [0u8; 128]; // an ID3v1 tag is the last 128 bytes
        tag[..3].copy_from_slice(b"TAG");
        tag[3..3 + title.len()].copy_from_slice(title);
        tag[33..33 + artist.len()].copy_from_slice(artist);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tagged.mp3");
        std::fs::write(&path, [&[0u8; 1000][..], &tag].concat()).unwrap();
        (dir, path)
    }

    #[test]
    fn id3v1_fields_are_latin1_and_trimmed() {
        let (_dir, path) = with_id3v1(b"Caf\xe9  ", &[b' '; 30]);
        assert_eq!(
            read_id3v1(&path).unwrap(),
            Some((Some("Caf\u{e9}".to_owned()), None))
        );
        let (_dir, path) = with_id3v1(b"", b"Artist\0junk after the NUL");
        assert_eq!(
            read_id3v1(&path).unwrap(),
            Some((None, Some("Artist".to_owned())))
        );
    }

    #[test]
    fn no_id3v1_tag_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.mp3");
        std::fs::write(&short, b"TAG").unwrap();
        assert_eq!(read_id3v1(&short).unwrap(), None);
        let untagged = dir.path().join("untagged.mp3");
        std::fs::write(&untagged, [0u8; 500]).unwrap();
        assert_eq!(read_id3v1(&untagged).unwrap(), None);
    }
}
