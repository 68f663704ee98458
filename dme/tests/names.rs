//! No user input reaches a path or a header unescaped: hostile file names and tags (`../`, NUL,
//! CR LF, a bidirectional override, thousands of characters) sent as a raw upload's `?name=`, a
//! multipart file name and ID3 tags, against a real system. Each song's name is shown clean,
//! its download's `Content-Disposition` is one well-formed header line, and every object in the
//! store is named from ids and hashes only.

use std::time::Duration;

use dme_storage::Store;
use dme_testkit::song::{id3v2_frame, id3v2_wrap, test_song};
use dme_testkit::system::{synth_wav, Options, System};
use serde_json::Value;

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// The longest name the gateway keeps (`MAX_FILE_NAME_CHARS` in its upload module).
const MAX_NAME_CHARS: usize = 200;

/// Whether `text` is fit to show: no control character and no bidirectional formatting mark.
fn clean(text: &str) -> bool {
    text.chars().all(|c| {
        !c.is_control()
            && !matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    }) && text.chars().count() <= MAX_NAME_CHARS
}

/// An ID3v2.3 text frame in UTF-16 with a byte-order mark (encoding 1), which carries any text.
fn utf16_frame(id: &[u8; 4], text: &str) -> Vec<u8> {
    let mut body = vec![1u8, 0xFF, 0xFE];
    body.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    id3v2_frame(id, &body)
}

/// A distinct short song per case (ids are content hashes).
fn song(seed: f32) -> Vec<u8> {
    synth_wav(44_100, 44_100, seed)
}

/// Checks the song's name and band, and its first stem's download header; returns the name.
async fn check_song(sys: &System, music: &Value) -> String {
    let id = music["music_id"].as_u64().unwrap();
    let name = music["name"].as_str().unwrap().to_string();
    let band = music["band"].as_str().unwrap();
    assert!(clean(&name), "name {name:?}");
    assert!(clean(band), "band {band:?}");
    assert!(!name.contains('/') && !name.contains('\\'), "{name:?}");
    let done = sys
        .wait_music(id, "its stems", |m| {
            m["instruments"].as_array().is_some_and(|i| !i.is_empty())
        })
        .await;
    let link = done["instruments"][0]["track"].as_str().unwrap();
    let download = sys.download(link).await;
    assert_eq!(download.status, 200);
    let disposition = download
        .headers
        .get("content-disposition")
        .expect("a download names its file")
        .to_str()
        .expect("Content-Disposition is visible ASCII")
        .to_string();
    assert!(
        disposition.starts_with("attachment; filename=\""),
        "{disposition}"
    );
    assert!(
        !disposition.contains(['\r', '\n', '\0']) && !disposition.contains(".."),
        "{disposition}"
    );
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_tags_are_kept_as_clean_text_and_never_reach_a_path() {
    let sys = System::start(DME, Options::default()).await;
    let long = "x".repeat(5000);
    // `?name=` values, percent-encoded as a client would send them, and the name each must give.
    let cases: [(&str, &str); 6] = [
        ("..%2F..%2F..%2Fetc%2Fpasswd.wav", "passwd"),
        ("nul%00byte.wav", "nulbyte"),
        ("song%0D%0ASet-Cookie%3A%20x%3D1.wav", "songSet-Cookie: x=1"),
        ("evil%E2%80%AEvaw.exe", "evilvaw"),
        ("%5C..%5Cwindows%5Cwin.ini", "win"),
        (&long, ""),
    ];
    let mut names = Vec::new();
    for (i, (raw, expected)) in cases.iter().enumerate() {
        let music = sys.upload_ok(song(0.11 + i as f32 * 0.07), raw).await;
        let name = check_song(&sys, &music).await;
        if expected.is_empty() {
            assert_eq!(
                name,
                "x".repeat(MAX_NAME_CHARS),
                "cut to the longest name kept"
            );
        } else {
            assert_eq!(&name, expected, "?name={raw}");
        }
        names.push(name);
    }

    // A multipart file name with a path, CR LF and a bidirectional override.
    let part = reqwest::multipart::Part::bytes(song(0.9))
        .file_name("../../x\u{202E}3pm.exe.wav")
        .mime_str("audio/wav")
        .unwrap();
    // Sent as the bytes it is, not percent-encoded.
    let form = reqwest::multipart::Form::new()
        .percent_encode_noop()
        .part("file", part);
    let answer = sys
        .http
        .post(sys.url("/music"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let music: Value = answer.json().await.unwrap();
    assert_eq!(check_song(&sys, &music).await, "x3pm.exe");

    // Tags are the client's text too.
    let tag = id3v2_wrap(
        &[
            utf16_frame(b"TIT2", "Title\r\nX-Evil: 1\u{202E}3pm.exe"),
            utf16_frame(b"TPE1", &format!("\u{2066}Band\u{2069}{long}")),
        ]
        .concat(),
    );
    let mp3 = test_song()
        .encode(dme_audio::Format::Mp3)
        .expect("the test song encodes");
    let music = sys.upload_ok([tag, mp3].concat(), "tagged.mp3").await;
    assert_eq!(music["name"], "TitleX-Evil: 13pm.exe");
    let band = music["band"].as_str().unwrap();
    assert!(
        band.starts_with("Bandxxx") && band.chars().count() == MAX_NAME_CHARS,
        "{band}"
    );
    check_song(&sys, &music).await;

    // Every object is named from ids, incarnations, indices, stem names and mix keys. (Each
    // expected name has a letter outside hex, so a random id cannot hold one by chance.)
    let store = Store::connect(&sys.nats.url(), "test", Duration::from_secs(10))
        .await
        .unwrap();
    let objects = store.object_names("").await.unwrap();
    assert!(!objects.is_empty());
    for object in &objects {
        assert!(
            object
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/.-~_".contains(&b)),
            "object {object:?}"
        );
        assert!(!object.contains(".."), "object {object:?}");
        for name in &names {
            assert!(name.chars().any(|c| !c.is_ascii_hexdigit()), "{name}");
            assert!(!object.contains(name.as_str()), "{object} holds {name}");
        }
    }
}
