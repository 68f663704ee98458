//! Opening an input file as a symphonia media source: container sniffing, and repair of WAV
//! headers whose sizes lie.
//!
//! Uploaded WAVs often come from tools that stream their output: the RIFF and `data` sizes are
//! then 0 or `0xFFFF_FFFF`, or larger than the file because it was cut short. Symphonia trusts
//! those sizes and then either sees no audio at all or drops the last partial packet on EOF. We
//! therefore read the chunk headers ourselves and present symphonia a view of the file in which
//! the two size fields tell the truth (the file on disk is never modified).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use symphonia::core::io::MediaSource;

use crate::{AudioError, HeaderDefect};

/// How many bytes of the file head [`sniff_container`] looks at: enough for every magic number
/// we recognise (the MP4 `ftyp` box sits at offset 4).
pub(crate) const SNIFF_LEN: usize = 64;

/// Upper bound on the RIFF chunks walked before giving up on finding `data`; real files have a
/// handful, and the bound keeps a crafted file of millions of tiny chunks from stalling us.
const MAX_RIFF_CHUNKS: usize = 4096;

/// ID3v2 tags checked in a row at the head of a file (taggers that prepend instead of replacing
/// leave two or three); a file of nothing but tiny tags stops being checked here.
const MAX_ID3V2_TAGS: usize = 16;

/// ID3v2 frames checked per tag (real tags have dozens; each costs one small read).
const MAX_ID3V2_FRAMES: usize = 4096;

/// An open input file plus what we learnt from its first bytes.
pub(crate) struct OpenedFile {
    /// The source to hand to symphonia.
    pub source: PatchedFile,
    /// The first [`SNIFF_LEN`] bytes (fewer for a shorter file).
    pub head: Vec<u8>,
    /// Total length in bytes.
    pub len: u64,
}

/// Open `path`, reject an empty file, prepare WAV header repairs, and step over broken ID3v2
/// tags.
///
/// # Errors
///
/// [`AudioError::Io`] when the file cannot be opened or read, [`AudioError::Empty`] when it has
/// zero bytes, [`AudioError::NotAudio`] when it holds nothing but a broken ID3v2 tag,
/// [`AudioError::BadHeader`] when a WAV header states a value no audio can have.
pub(crate) fn open_file(path: &Path) -> Result<OpenedFile, AudioError> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Err(AudioError::Empty);
    }
    let mut head = read_head(&mut file, 0)?;
    let base = if head.starts_with(b"ID3") {
        id3v2_skip(&mut file, len)?
    } else {
        0
    };
    if base >= len {
        return Err(AudioError::NotAudio(
            "a broken ID3v2 tag and nothing after it".into(),
        ));
    }
    if base > 0 {
        head = read_head(&mut file, base)?;
    }
    let patches = if base == 0 && is_wav(&head) {
        wav_size_patches(&mut file, len)?
    } else {
        Vec::new()
    };
    file.seek(SeekFrom::Start(base))?;
    Ok(OpenedFile {
        source: PatchedFile {
            file,
            base,
            len: len - base,
            pos: 0,
            patches,
        },
        head,
        len: len - base,
    })
}

/// The first [`SNIFF_LEN`] bytes from `offset`.
fn read_head(file: &mut File, offset: u64) -> io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut head = Vec::with_capacity(SNIFF_LEN);
    file.take(SNIFF_LEN as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Where symphonia should start reading a file that opens with ID3v2 tags: 0 when every tag is
/// sound, else just past the last broken one.
///
/// Symphonia allocates each ID3v2 frame at the size its header states before reading it, so one
/// frame claiming 4 GiB in a 100-byte upload is a 4 GiB allocation (which aborts the process
/// where memory is not overcommitted). A tag is broken when a frame runs past the end of the tag
/// or of the file, or when its frames cannot be checked without decoding it first (tag-wide
/// unsynchronisation, extended headers). Skipping a broken tag loses its title and artist; the
/// audio after it is untouched.
fn id3v2_skip(file: &mut File, len: u64) -> io::Result<u64> {
    let mut offset = 0;
    let mut skip_to = 0;
    for _ in 0..MAX_ID3V2_TAGS {
        let mut header = [0u8; 10];
        if offset + 10 > len {
            break;
        }
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut header)?;
        if &header[0..3] != b"ID3" {
            break;
        }
        let (major, flags) = (header[3], header[5]);
        if !(2..=4).contains(&major) {
            break; // symphonia rejects it before reading any frame
        }
        let size = syncsafe(&header[6..10]);
        let footer = if major == 4 && flags & 0x10 != 0 {
            10
        } else {
            0
        };
        let end = offset + 10 + size + footer;
        let checkable = flags & 0x40 == 0 && !(flags & 0x80 != 0 && major < 4);
        let body_end = (offset + 10 + size).min(len);
        if !checkable || !id3v2_frames_fit(file, offset + 10, body_end, major)? {
            skip_to = end;
        }
        offset = end;
    }
    Ok(skip_to)
}

/// Whether every frame of the ID3v2 tag body in `start..end` ends inside it.
fn id3v2_frames_fit(file: &mut File, start: u64, end: u64, major: u8) -> io::Result<bool> {
    let header_len: u64 = if major == 2 { 6 } else { 10 };
    let mut pos = start;
    let mut header = [0u8; 10];
    for _ in 0..MAX_ID3V2_FRAMES {
        if pos + header_len > end {
            return Ok(true);
        }
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut header[..header_len as usize])?;
        let id_len = if major == 2 { 3 } else { 4 };
        if !header[..id_len]
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        {
            return Ok(true); // padding: symphonia stops here too
        }
        let size = match major {
            2 => u64::from(u32::from_be_bytes([0, header[3], header[4], header[5]])),
            3 => u64::from(u32::from_be_bytes([
                header[4], header[5], header[6], header[7],
            ])),
            _ => syncsafe(&header[4..8]),
        };
        pos += header_len + size;
        if pos > end {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A 28-bit "syncsafe" integer (7 bits per byte), read the way symphonia reads it (high bits
/// masked off).
fn syncsafe(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |acc, b| (acc << 7) | u64::from(b & 0x7F))
}

/// Whether the head is a little-endian RIFF/WAVE file (the only kind whose sizes we repair).
fn is_wav(head: &[u8]) -> bool {
    head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WAVE"
}

/// One of `infer`'s magic-number matchers and the name dme gives what it matches.
type Matcher = (fn(&[u8]) -> bool, &'static str);

/// Containers the `infer` crate recognises, tried in order, with the name dme gives each.
const INFERRED_CONTAINERS: &[Matcher] = &[
    (infer::audio::is_wav, "wav"),
    (infer::audio::is_aiff, "aiff"),
    (infer::audio::is_flac, "flac"),
    (infer::audio::is_ogg, "ogg"),
    (infer::audio::is_m4a, "mp4"),
    (infer::video::is_mp4, "mp4"),
    // An ID3v2 tag is almost always followed by MPEG audio; ADTS AAC with ID3 is rare.
    (infer::audio::is_mp3, "mp3"),
    (infer::audio::is_aac, "aac"),
];

/// Best-effort container name from the file's magic bytes, used for [`crate::Probe::container`]
/// because symphonia 0.5 does not say which format reader it picked.
///
/// `infer` does the recognising; [`sniff_fallback`] covers what it cannot tell.
pub(crate) fn sniff_container(head: &[u8]) -> Option<&'static str> {
    INFERRED_CONTAINERS
        .iter()
        .find(|(matches, _)| matches(head))
        .map(|(_, name)| *name)
        .or_else(|| sniff_fallback(head))
}

/// Magic numbers of containers symphonia reads that `infer` 0.22 does not recognise:
///
/// * RF64 and BW64, the 64-bit WAV variants;
/// * AIFF-C (`infer` knows only plain AIFF);
/// * MP4 files whose `ftyp` brand is not in `infer`'s list, or that open with `moov`/`mdat`;
/// * Matroska/WebM: `infer` needs 257 bytes and a `matroska` or `webm` doctype, while symphonia
///   reads any EBML document and we sniff only [`SNIFF_LEN`] bytes;
/// * CAF;
/// * raw MPEG audio and ADTS frames other than the few header bytes `infer` lists (MPEG-1
///   Layer III with CRC, MPEG-2.5, Layers I and II; ADTS with a CRC).
fn sniff_fallback(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    let sync = head.len() >= 2 && head[0] == 0xFF;
    if at(0, b"RF64") || at(0, b"BW64") {
        Some("wav")
    } else if at(0, b"FORM") && at(8, b"AIFC") {
        Some("aiff")
    } else if at(4, b"ftyp") || at(4, b"moov") || at(4, b"mdat") {
        Some("mp4")
    } else if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        Some("mkv")
    } else if at(0, b"caff") {
        Some("caf")
    } else if sync && head[1] & 0xF6 == 0xF0 {
        Some("aac") // ADTS sync word with layer bits 00.
    } else if sync && head[1] & 0xE0 == 0xE0 {
        Some("mp3")
    } else {
        None
    }
}

/// Common non-audio files, recognised by `infer`, with what to call them.
const NON_AUDIO: &[Matcher] = &[
    (infer::image::is_png, "png image"),
    (infer::image::is_jpeg, "jpeg image"),
    (infer::image::is_gif, "gif image"),
    (infer::archive::is_zip, "zip archive"),
    (infer::archive::is_gz, "gzip archive"),
    (infer::app::is_elf, "elf executable"),
    (infer::image::is_bmp, "bmp image"),
];

/// Whether the head carries the magic number of a common non-audio file. Symphonia's probe scans
/// up to a megabyte for any audio sync pattern, and compressed data (PNG, ZIP, ...) is random
/// enough to contain an MPEG frame sync by chance; such files are rejected up front.
///
/// PDF is checked here rather than with `infer`, which accepts `%PDF` anywhere in the first KiB
/// (Acrobat's rule): the head of an MP3 is its ID3v2 tag, whose title may well say "%PDF".
pub(crate) fn is_known_non_audio(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"%PDF-") {
        return Some("pdf document");
    }
    NON_AUDIO
        .iter()
        .find(|(matches, _)| matches(head))
        .map(|(_, what)| *what)
}

/// Walk the RIFF chunks of a WAV file and compute the byte patches that make the RIFF and `data`
/// sizes consistent with the real file length (see the module docs).
///
/// # Errors
///
/// [`AudioError::BadHeader`] when the `fmt ` chunk states a value no audio can have (see
/// [`check_wav_fmt`]), [`AudioError::Io`] when reading fails.
fn wav_size_patches(file: &mut File, len: u64) -> Result<Vec<(u64, [u8; 4])>, AudioError> {
    let mut patches = Vec::new();
    let mut header = [0u8; 8];
    file.seek(SeekFrom::Start(4))?;
    file.read_exact(&mut header[..4])?;
    let riff_len = u64::from(u32::from_le_bytes([
        header[0], header[1], header[2], header[3],
    ]));
    // Symphonia rejects any chunk that overruns the RIFF size, so make the RIFF size the file's:
    // streamed and truncated files lie about it, and no chunk can extend past the file anyway.
    let true_riff_len = (len - 8).min(u64::from(u32::MAX));
    if riff_len != true_riff_len {
        patches.push((4, (true_riff_len as u32).to_le_bytes()));
    }
    let mut block_align: u64 = 1;
    let mut offset: u64 = 12;
    for _ in 0..MAX_RIFF_CHUNKS {
        if offset + 8 > len {
            break;
        }
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut header)?;
        let size = u64::from(u32::from_le_bytes([
            header[4], header[5], header[6], header[7],
        ]));
        let body = offset + 8;
        if &header[0..4] == b"fmt " && body + WAV_FMT_LEN <= len {
            let mut fmt = [0u8; WAV_FMT_LEN as usize];
            file.read_exact(&mut fmt)?;
            block_align = u64::from(check_wav_fmt(&fmt)?);
        }
        if &header[0..4] == b"data" {
            let available = len - body;
            if size == 0 || size == u64::from(u32::MAX) || size > available {
                // Symphonia cannot address more than 4 GiB anyway; keep the field in range.
                let fits = available.min(u64::from(u32::MAX));
                let data_len = fits - fits % block_align;
                patches.push((offset + 4, (data_len as u32).to_le_bytes()));
            }
            break;
        }
        offset = body + size + (size & 1);
    }
    Ok(patches)
}

/// Bytes of a WAV `fmt ` chunk's fixed part: format tag, channels, sample rate, byte rate,
/// block alignment and bits per sample.
const WAV_FMT_LEN: u64 = 16;

/// The block alignment (bytes per frame) of a WAV `fmt ` chunk, after checking the fields a
/// decoder divides by or builds its time base from: symphonia panics on a sample rate of 0
/// ("TimeBase cannot have 0 numerator or denominator") and cannot read frames of 0 bytes.
/// Values that are merely unusual (65 535 channels, a rate of 4 GHz) are left to the probe,
/// which says what it does not support.
///
/// # Errors
///
/// [`HeaderDefect`] for a rate, channel count, sample size or block alignment of 0.
fn check_wav_fmt(fmt: &[u8; WAV_FMT_LEN as usize]) -> Result<u16, HeaderDefect> {
    let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
    let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
    let block_align = u16::from_le_bytes([fmt[12], fmt[13]]);
    let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
    if rate == 0 {
        Err(HeaderDefect::ZeroSampleRate)
    } else if channels == 0 {
        Err(HeaderDefect::ZeroChannels)
    } else if bits == 0 {
        Err(HeaderDefect::ZeroBitsPerSample)
    } else if block_align == 0 {
        Err(HeaderDefect::ZeroFrameSize)
    } else {
        Ok(block_align)
    }
}

/// A file seen from `base` on (past broken ID3v2 tags) and through a few overwritten bytes (the
/// repaired WAV sizes). Positions, `len` and patches are relative to `base`.
pub(crate) struct PatchedFile {
    file: File,
    base: u64,
    len: u64,
    pos: u64,
    patches: Vec<(u64, [u8; 4])>,
}

impl Read for PatchedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        let start = self.pos;
        let end = start + n as u64;
        for (at, bytes) in &self.patches {
            for (i, byte) in bytes.iter().enumerate() {
                let p = at + i as u64;
                if p >= start && p < end {
                    buf[(p - start) as usize] = *byte;
                }
            }
        }
        self.pos = end;
        Ok(n)
    }
}

impl Seek for PatchedFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        let target = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.file.seek(SeekFrom::Start(self.base + target))?;
        self.pos = target;
        Ok(self.pos)
    }
}

impl MediaSource for PatchedFile {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_common_containers() {
        assert_eq!(sniff_container(b"RIFF\0\0\0\0WAVEfmt "), Some("wav"));
        assert_eq!(sniff_container(b"fLaC\0\0\0\x22"), Some("flac"));
        assert_eq!(sniff_container(b"OggS\0\x02"), Some("ogg"));
        assert_eq!(sniff_container(b"\0\0\0\x20ftypM4A "), Some("mp4"));
        assert_eq!(sniff_container(b"ID3\x03\0\0"), Some("mp3"));
        assert_eq!(sniff_container(&[0xFF, 0xFB, 0x90, 0x00]), Some("mp3"));
        assert_eq!(sniff_container(&[0xFF, 0xF1, 0x50, 0x80]), Some("aac"));
        assert_eq!(sniff_container(b"hello world"), None);
    }

    #[test]
    fn sniffs_what_infer_does_not_know() {
        assert_eq!(
            sniff_container(b"RF64\xFF\xFF\xFF\xFFWAVEds64"),
            Some("wav")
        );
        assert_eq!(sniff_container(b"FORM\0\0\0\x20AIFCFVER"), Some("aiff"));
        assert_eq!(sniff_container(b"\0\0\0\x20ftypXYZ1\0\0\0\0"), Some("mp4"));
        assert_eq!(sniff_container(b"\0\0\x10\0moov"), Some("mp4"));
        assert_eq!(
            sniff_container(&[0x1A, 0x45, 0xDF, 0xA3, 0x9F]),
            Some("mkv")
        );
        assert_eq!(sniff_container(b"caff\0\x01\0\0"), Some("caf"));
        // MPEG-1 Layer III with CRC, MPEG-2.5 Layer III, MPEG-1 Layer II.
        for second in [0xFA, 0xE3, 0xFD] {
            assert_eq!(sniff_container(&[0xFF, second, 0x90, 0x00]), Some("mp3"));
        }
        // ADTS with a CRC, MPEG-4 and MPEG-2.
        for second in [0xF0, 0xF8] {
            assert_eq!(sniff_container(&[0xFF, second, 0x50, 0x80]), Some("aac"));
        }
    }

    /// An ID3v2.3 tag holding one TIT2 frame whose size field says `frame_size`.
    fn id3v2_tag(frame_size: u32, padding: usize) -> Vec<u8> {
        let mut body = b"TIT2".to_vec();
        body.extend_from_slice(&frame_size.to_be_bytes());
        body.extend_from_slice(&[0, 0, 0]);
        body.extend_from_slice(b"Title");
        body.resize(body.len() + padding, 0);
        let size = body.len() as u32;
        let mut tag = b"ID3\x03\x00\x00".to_vec();
        tag.extend([21, 14, 7, 0].map(|shift| (size >> shift) as u8 & 0x7F));
        tag.extend(body);
        tag
    }

    fn skip_of(bytes: &[u8]) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tagged");
        std::fs::write(&path, bytes).unwrap();
        let mut file = File::open(&path).unwrap();
        id3v2_skip(&mut file, bytes.len() as u64).unwrap()
    }

    #[test]
    fn sound_id3v2_tags_are_kept_and_broken_ones_skipped() {
        let good = id3v2_tag(6, 20);
        let audio = [0xFFu8, 0xFB, 0x90, 0x00];
        assert_eq!(skip_of(&[&good[..], &audio].concat()), 0);
        // A frame claiming 4 GiB inside a 40-byte tag.
        let broken = id3v2_tag(u32::MAX, 20);
        assert_eq!(
            skip_of(&[&broken[..], &audio].concat()),
            broken.len() as u64
        );
        // A sound tag, then a broken one: skip both.
        let both = [&good[..], &broken[..], &audio].concat();
        assert_eq!(skip_of(&both), (good.len() + broken.len()) as u64);
        // A frame running past the end of a file cut inside the tag.
        let cut = &good[..good.len() - 25];
        assert_eq!(skip_of(cut), good.len() as u64);
    }

    /// A 16-bit PCM WAV with these `fmt ` fields and `data` of 4 KiB, its size field `data_len`.
    fn wav(channels: u16, rate: u32, bits: u16, block_align: u16, data_len: u32) -> Vec<u8> {
        let data = [1u8; 4096];
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&rate.wrapping_mul(u32::from(block_align)).to_le_bytes());
        out.extend_from_slice(&block_align.to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_len.to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    /// What probing and decoding a file say, as text: the message a user would see.
    fn outcome(bytes: &[u8]) -> (Result<u64, String>, Result<usize, String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wav");
        std::fs::write(&path, bytes).unwrap();
        let probe = crate::probe_path(&path, Some("wav")).map(|p| p.frames);
        let decode = crate::decode_path(&path, Some("wav"), 44_100).map(|s| s.frames());
        (
            probe.map_err(|e| e.to_string()),
            decode.map_err(|e| e.to_string()),
        )
    }

    #[test]
    fn extreme_wav_headers_get_clear_messages_and_never_panic() {
        let refused = |bytes: Vec<u8>, expected: &str| {
            let (probe, decode) = outcome(&bytes);
            for message in [probe.unwrap_err(), decode.unwrap_err()] {
                assert!(message.contains(expected), "{message}");
                for leak in ["panick", "TimeBase", "overflow", "riff:"] {
                    assert!(!message.contains(leak), "{message}");
                }
            }
        };
        refused(wav(2, 0, 16, 4, 4096), "sample rate is 0");
        refused(wav(0, 44_100, 16, 4, 4096), "0 channels");
        refused(wav(2, 44_100, 0, 4, 4096), "0 bits per sample");
        refused(wav(2, 44_100, 16, 0, 4096), "frames of 0 bytes");
        refused(wav(2, u32::MAX, 16, 4, 4096), "4294967295 Hz");
        refused(wav(u16::MAX, 44_100, 16, u16::MAX, 4096), "channel");
        refused(wav(2, 44_100, u16::MAX, 4, 4096), "bits per sample");
        // A data size of 4 GiB over 4 KiB of samples: the samples that are there.
        let (probe, decode) = outcome(&wav(2, 44_100, 16, 4, u32::MAX));
        assert_eq!((probe, decode), (Ok(1024), Ok(1024)));
        // Frames of 64 KiB: no whole frame in the file.
        let (probe, _) = outcome(&wav(2, 44_100, 16, u16::MAX, 4096));
        assert_eq!(probe, Ok(0));
    }

    #[test]
    fn recognises_non_audio_magic() {
        assert_eq!(
            is_known_non_audio(b"\x89PNG\r\n\x1a\n...."),
            Some("png image")
        );
        assert_eq!(is_known_non_audio(b"RIFF....WAVE"), None);
        assert_eq!(is_known_non_audio(b"%PDF-1.7\n"), Some("pdf document"));
        assert_eq!(is_known_non_audio(b"PK\x03\x04\x14\0"), Some("zip archive"));
        assert_eq!(is_known_non_audio(b"\x1F\x8B\x08\0"), Some("gzip archive"));
        // A PDF-looking title inside an ID3v2 tag is still an MP3.
        assert_eq!(
            is_known_non_audio(b"ID3\x03\0\0\0\0\0\x20TIT2\0\0\0\x09\0\0\0%PDF-1.4"),
            None
        );
    }
}
