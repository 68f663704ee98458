//! The committed audio fixtures (`libs/testkit/fixtures/`), with the generator spec each was
//! encoded from, so tests can compare what they decode with what was encoded.

use std::path::PathBuf;

use crate::song::SongSpec;

/// One committed file and what it holds.
#[derive(Debug, Clone, Copy)]
pub struct Fixture {
    /// File name under `libs/testkit/fixtures/`.
    pub file: &'static str,
    /// The song it was encoded from.
    pub spec: SongSpec,
    /// Codec as `dme_audio::Probe::codec` names it.
    pub codec: &'static str,
    /// Container as `dme_audio::Probe::container` names it.
    pub container: &'static str,
    /// Its title tag.
    pub title: &'static str,
    /// Its artist tag.
    pub artist: &'static str,
}

/// OGG Vorbis, 3 s of 44.1 kHz stereo.
pub const VORBIS: Fixture = Fixture {
    file: "song-vorbis.ogg",
    spec: SongSpec::new(3.0, 44_100, 2),
    codec: "vorbis",
    container: "ogg",
    title: "dme fixture vorbis",
    artist: "dme testkit",
};

/// AAC-LC in M4A, 3 s of 48 kHz stereo.
pub const AAC: Fixture = Fixture {
    file: "song-aac.m4a",
    spec: SongSpec::new(3.0, 48_000, 3),
    codec: "aac",
    container: "mp4",
    title: "dme fixture aac",
    artist: "dme testkit",
};

/// Every committed fixture.
pub const ALL: [Fixture; 2] = [VORBIS, AAC];

impl Fixture {
    /// Its path.
    ///
    /// # Panics
    /// When the file is missing.
    pub fn path(&self) -> PathBuf {
        crate::fixture(self.file)
    }
}
