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

use crate::AudioError;

/// How many bytes of the file head [`sniff_container`] looks at: enough for every magic number
/// we recognise (the MP4 `ftyp` box sits at offset 4).
pub(crate) const SNIFF_LEN: usize = 64;

/// Upper bound on the RIFF chunks walked before giving up on finding `data`; real files have a
/// handful, and the bound keeps a crafted file of millions of tiny chunks from stalling us.
const MAX_RIFF_CHUNKS: usize = 4096;

/// An open input file plus what we learnt from its first bytes.
pub(crate) struct OpenedFile {
    /// The source to hand to symphonia.
    pub source: PatchedFile,
    /// The first [`SNIFF_LEN`] bytes (fewer for a shorter file).
    pub head: Vec<u8>,
    /// Total length in bytes.
    pub len: u64,
}

/// Open `path`, reject an empty file, and prepare WAV header repairs.
///
/// # Errors
///
/// [`AudioError::Io`] when the file cannot be opened or read, [`AudioError::Empty`] when it has
/// zero bytes.
pub(crate) fn open_file(path: &Path) -> Result<OpenedFile, AudioError> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Err(AudioError::Empty);
    }
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut file).take(SNIFF_LEN as u64).read_to_end(&mut head)?;
    let patches = if is_wav(&head) {
        wav_size_patches(&mut file, len)?
    } else {
        Vec::new()
    };
    file.seek(SeekFrom::Start(0))?;
    Ok(OpenedFile {
        source: PatchedFile {
            file,
            len,
            pos: 0,
            patches,
        },
        head,
        len,
    })
}

/// Whether the head is a little-endian RIFF/WAVE file (the only kind whose sizes we repair).
fn is_wav(head: &[u8]) -> bool {
    head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WAVE"
}

/// Best-effort container name from the file's magic bytes, used for [`crate::Probe::container`]
/// because symphonia 0.5 does not say which format reader it picked.
pub(crate) fn sniff_container(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"RIFF") && at(8, b"WAVE") || at(0, b"RF64") || at(0, b"BW64") {
        Some("wav")
    } else if at(0, b"FORM") && (at(8, b"AIFF") || at(8, b"AIFC")) {
        Some("aiff")
    } else if at(0, b"fLaC") {
        Some("flac")
    } else if at(0, b"OggS") {
        Some("ogg")
    } else if at(4, b"ftyp") || at(4, b"moov") || at(4, b"mdat") {
        Some("mp4")
    } else if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        Some("mkv")
    } else if at(0, b"caff") {
        Some("caf")
    } else if at(0, b"ID3") {
        // An ID3v2 tag is almost always followed by MPEG audio; ADTS AAC with ID3 is rare.
        Some("mp3")
    } else if head.len() >= 2 && head[0] == 0xFF && head[1] & 0xF6 == 0xF0 {
        Some("aac") // ADTS sync word with layer bits 00.
    } else if head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0 {
        Some("mp3")
    } else {
        None
    }
}

/// Whether the head carries the magic number of a common non-audio file. Symphonia's probe scans
/// up to a megabyte for any audio sync pattern, and compressed data (PNG, ZIP, ...) is random
/// enough to contain an MPEG frame sync by chance; such files are rejected up front.
pub(crate) fn is_known_non_audio(head: &[u8]) -> Option<&'static str> {
    const SIGNATURES: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "png image"),
        (b"\xFF\xD8\xFF", "jpeg image"),
        (b"GIF87a", "gif image"),
        (b"GIF89a", "gif image"),
        (b"%PDF-", "pdf document"),
        (b"PK\x03\x04", "zip archive"),
        (b"\x1F\x8B", "gzip archive"),
        (b"\x7FELF", "elf executable"),
        (b"BM", "bmp image"),
    ];
    SIGNATURES
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, what)| *what)
}

/// Walk the RIFF chunks of a WAV file and compute the byte patches that make the RIFF and `data`
/// sizes consistent with the real file length (see the module docs).
fn wav_size_patches(file: &mut File, len: u64) -> io::Result<Vec<(u64, [u8; 4])>> {
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
        if &header[0..4] == b"fmt " && body + 14 <= len {
            let mut fmt = [0u8; 14];
            file.read_exact(&mut fmt)?;
            block_align = u64::from(u16::from_le_bytes([fmt[12], fmt[13]])).max(1);
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

/// A file seen through a few overwritten bytes (the repaired WAV sizes).
pub(crate) struct PatchedFile {
    file: File,
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
        self.pos = self.file.seek(to)?;
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
    fn recognises_non_audio_magic() {
        assert_eq!(
            is_known_non_audio(b"\x89PNG\r\n\x1a\n...."),
            Some("png image")
        );
        assert_eq!(is_known_non_audio(b"RIFF....WAVE"), None);
    }
}
