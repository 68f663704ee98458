//! Stable ids. All are derived with blake3 and truncated to [`ID_BITS`] bits, so any gateway,
//! any restart and any replica computes the same id for the same thing, and JavaScript's numbers
//! (53-bit integers) hold them exactly.

use std::fmt;
use std::str::FromStr;

/// Bits kept from the hash: below 2^53 (JavaScript's exact integers) with room to spare; the
/// chance that two of a million songs collide is about 1e-4, and a collision is detected
/// (the full content hash is kept in the record) rather than silently merged.
pub const ID_BITS: u32 = 52;

fn truncate(hash: &blake3::Hash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash.as_bytes()[..8]);
    // Never 0: 0 reads as "missing" in too many clients.
    (u64::from_le_bytes(b) >> (64 - ID_BITS)).max(1)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }
    };
}

id_type!(
    /// A song, derived from the blake3 hash of its bytes: the same file uploaded twice is the
    /// same music.
    MusicId
);
id_type!(
    /// One stem of one song (e.g. the drums of song 42).
    TrackId
);
id_type!(
    /// The separation of one segment of one song.
    JobId
);

/// One life of a song's record: a random number chosen when the record is created. The same
/// bytes uploaded again after a reset get the same [`MusicId`] but a new incarnation, and every
/// message id and work message of the song carries it, so neither JetStream's duplicate window
/// (which outlives a purge) nor work in flight from before the reset can touch the new song.
/// Records and messages written before incarnations existed read as `Incarnation(0)`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Incarnation(pub u64);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Incarnation {
    /// A new random incarnation, from the operating system's random source; should that ever be
    /// unavailable, from a hash of the time, the process and a counter (unique is all it needs).
    pub fn fresh() -> Incarnation {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let random = getrandom::u64().unwrap_or_else(|_| {
            let mut h = blake3::Hasher::new_derive_key("dme incarnation v1");
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            h.update(&nanos.to_le_bytes());
            h.update(&std::process::id().to_le_bytes());
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            h.update(&n.to_le_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&h.finalize().as_bytes()[..8]);
            u64::from_le_bytes(b)
        });
        // Never 0: that is what records from before incarnations read as.
        Incarnation(random.max(1))
    }
}

impl MusicId {
    /// The id of the song made of a file whose blake3 content hash is `hash`, separated by the
    /// model whose fingerprint is `model`: the same file with two models is two songs (each
    /// has its own stems), the same file with the same model is one.
    pub fn of_upload(hash: &blake3::Hash, model: &str) -> Self {
        let mut h = blake3::Hasher::new_derive_key("dme music id v2");
        h.update(hash.as_bytes());
        h.update(model.as_bytes());
        MusicId(truncate(&h.finalize()))
    }
}

impl TrackId {
    /// The id of the stem named `stem` of `music`.
    pub fn of(music: MusicId, stem: &str) -> Self {
        let mut h = blake3::Hasher::new_derive_key("dme track id v1");
        h.update(&music.0.to_le_bytes());
        h.update(stem.as_bytes());
        TrackId(truncate(&h.finalize()))
    }
}

impl JobId {
    /// The id of the separation of segment `index` of `music`.
    pub fn of(music: MusicId, index: u32) -> Self {
        let mut h = blake3::Hasher::new_derive_key("dme job id v1");
        h.update(&music.0.to_le_bytes());
        h.update(&index.to_le_bytes());
        JobId(truncate(&h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_below_2_pow_53() {
        let m = MusicId::of_upload(&blake3::hash(b"song"), "0123abcd");
        assert_eq!(m, MusicId::of_upload(&blake3::hash(b"song"), "0123abcd"));
        assert_ne!(m, MusicId::of_upload(&blake3::hash(b"song"), "4567ef01"));
        assert_ne!(m, MusicId::of_upload(&blake3::hash(b"tune"), "0123abcd"));
        assert!(m.0 < 1 << 53 && m.0 > 0);
        let t = TrackId::of(m, "drums");
        assert_ne!(t, TrackId::of(m, "bass"));
        assert!(t.0 < 1 << 53);
        assert_ne!(JobId::of(m, 0), JobId::of(m, 1));
        assert_eq!(serde_json::to_string(&m).unwrap(), m.0.to_string());
    }

    #[test]
    fn incarnations_differ_and_are_never_zero() {
        let a = Incarnation::fresh();
        let b = Incarnation::fresh();
        assert_ne!(a, b);
        assert_ne!(a, Incarnation(0));
        assert_eq!(Incarnation(0x2a).to_string(), "000000000000002a");
    }
}
