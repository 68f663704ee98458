//! The web page in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, installed by `scripts/setup.sh --browser`, which
//! `make test` runs) against a real system. A person's path through the page: upload a song
//! through the file input, watch its progress rise live, see every stem, play, mute and solo
//! from the keyboard and the mouse, move a volume slider, export the mix and get the file the
//! browser downloaded; the page's screenshot is saved (`DME_UPDATE_SCREENSHOT=1` refreshes the
//! README's `docs/page.png`).
//!
//! The WebDriver client is the W3C protocol's few JSON endpoints over the HTTP client the
//! tests already use (`webdriver` below), not a crate with its own HTTP stack.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dme_audio::Format;
use dme_testkit::song::SongSpec;
use dme_testkit::system::{decode_bytes, env, synth_wav, Options, System, SONG_DEADLINE};
use dme_testkit::{free_port, repo_root, wait_for, Process};
use serde_json::{json, Value};

const DME: &str = env!("CARGO_BIN_EXE_dme");

/// Length of the uploaded song: three segments of the default model (a few seconds of work).
const SONG_SECONDS: f64 = 10.0;

/// Window of the screenshot in the README.
const WINDOW: (u32, u32) = (1000, 1650);

/// The narrowest phone the page is made for.
const NARROW_WIDTH: u32 = 375;

/// How long a page action (a click's effect, a decoded stem) may take on a loaded 2-core
/// machine: a hang guard, not a timed assertion.
const PAGE_DEADLINE: Duration = Duration::from_secs(60);

mod webdriver {
    //! A W3C WebDriver client: a session of `chromedriver`, and the commands the test uses.

    use std::time::Duration;

    use serde_json::{json, Value};

    /// The key that names an element in WebDriver answers.
    const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

    /// An open browser session; closed (the browser quits) on [`Session::close`].
    pub struct Session {
        http: reqwest::Client,
        base: String,
    }

    /// An element of the page.
    #[derive(Clone, Debug)]
    pub struct Element(String);

    impl Session {
        /// Opens a session on the driver at `driver` (`http://127.0.0.1:port`) with
        /// `capabilities`.
        pub async fn start(driver: &str, capabilities: Value) -> Session {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("an HTTP client");
            let answer = call(
                &http,
                reqwest::Method::POST,
                &format!("{driver}/session"),
                Some(json!({ "capabilities": { "alwaysMatch": capabilities } })),
            )
            .await;
            let id = answer["sessionId"]
                .as_str()
                .expect("a session id")
                .to_string();
            Session {
                http,
                base: format!("{driver}/session/{id}"),
            }
        }

        async fn post(&self, path: &str, body: Value) -> Value {
            let url = format!("{}{path}", self.base);
            call(&self.http, reqwest::Method::POST, &url, Some(body)).await
        }

        async fn get(&self, path: &str) -> Value {
            let url = format!("{}{path}", self.base);
            call(&self.http, reqwest::Method::GET, &url, None).await
        }

        /// Opens `url`.
        pub async fn goto(&self, url: &str) {
            self.post("/url", json!({ "url": url })).await;
        }

        /// The first element matching the CSS `selector`.
        pub async fn find(&self, selector: &str) -> Element {
            let v = self
                .post(
                    "/element",
                    json!({ "using": "css selector", "value": selector }),
                )
                .await;
            Element(v[ELEMENT].as_str().expect("an element").to_string())
        }

        /// Clicks `element` as a pointer would.
        pub async fn click(&self, element: &Element) {
            self.post(&format!("/element/{}/click", element.0), json!({}))
                .await;
        }

        /// Types `text` into `element` (a file input takes a path).
        pub async fn send_keys(&self, element: &Element, text: &str) {
            self.post(
                &format!("/element/{}/value", element.0),
                json!({ "text": text }),
            )
            .await;
        }

        /// Presses `key` with Shift held or not, on whatever has the focus.
        pub async fn press(&self, key: &str, shift: bool) {
            const SHIFT: &str = "\u{E008}";
            let mut actions = Vec::new();
            if shift {
                actions.push(json!({ "type": "keyDown", "value": SHIFT }));
            }
            actions.push(json!({ "type": "keyDown", "value": key }));
            actions.push(json!({ "type": "keyUp", "value": key }));
            if shift {
                actions.push(json!({ "type": "keyUp", "value": SHIFT }));
            }
            self.post(
                "/actions",
                json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] }),
            )
            .await;
            self.http
                .delete(format!("{}/actions", self.base))
                .send()
                .await
                .expect("releasing the keys");
        }

        /// Runs `script` (a function body) in the page and returns its value.
        pub async fn js(&self, script: &str) -> Value {
            self.post("/execute/sync", json!({ "script": script, "args": [] }))
                .await
        }

        /// Sets the window's size.
        pub async fn resize(&self, width: u32, height: u32) {
            self.post("/window/rect", json!({ "width": width, "height": height }))
                .await;
        }

        /// A PNG of the viewport.
        pub async fn screenshot(&self) -> Vec<u8> {
            let v = self.get("/screenshot").await;
            super::base64_decode(v.as_str().expect("a base64 screenshot"))
        }

        /// Ends the session (the browser quits).
        pub async fn close(self) {
            let _ = self.http.delete(&self.base).send().await;
        }
    }

    /// One command: its answer's `value`; panics with the driver's error.
    async fn call(
        http: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Value {
        let mut request = http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("an answer from chromedriver");
        let status = response.status();
        let mut v: Value = response.json().await.expect("a JSON answer");
        assert!(
            status.is_success(),
            "WebDriver {url}: {status} {}",
            v["value"]
        );
        v["value"].take()
    }
}

use webdriver::Session;

/// Standard base64 (what WebDriver screenshots are) to bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | u32::from(*d) << (18 - 6 * i));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// `$DME_CHROMEDRIVER`, else Debian's `/usr/bin/chromedriver`.
fn chromedriver() -> PathBuf {
    let path = std::env::var_os("DME_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    assert!(
        path.exists(),
        "{} missing: run scripts/setup.sh --browser (make test does) to install Debian's \
         chromium and chromium-driver",
        path.display()
    );
    path
}

/// Where the screenshot goes: `target/browser/page.png`, or with `DME_UPDATE_SCREENSHOT=1` the
/// README's `docs/page.png` (so a plain test run leaves the committed picture alone).
fn screenshot_path() -> PathBuf {
    if std::env::var("DME_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        return repo_root().join("docs/page.png");
    }
    screenshot_dir().join("page.png")
}

/// `target/browser/`, where screenshots that are not committed go.
fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("browser")
}

/// Starts chromedriver and a headless Chromium session that downloads into `downloads`.
async fn browser(downloads: &Path) -> (Process, Session) {
    let port = free_port();
    let mut command = Command::new(chromedriver());
    command.arg(format!("--port={port}"));
    let driver = Process::spawn("chromedriver", command);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("chromedriver to serve", PAGE_DEADLINE, || {
        let request = http.get(format!("{url}/status"));
        async move {
            let status: Value = request.send().await.ok()?.json().await.ok()?;
            (status["value"]["ready"] == true).then_some(())
        }
    })
    .await;
    let binary = std::env::var("DME_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let session = Session::start(
        &url,
        json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--autoplay-policy=no-user-gesture-required",
                    format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                ],
                "prefs": {
                    "download.default_directory": downloads.to_str().expect("a UTF-8 path"),
                    "download.prompt_for_download": false,
                },
            },
        }),
    )
    .await;
    (driver, session)
}

/// Waits until `script` (a function body) returns something other than null or false in
/// the page, and returns it.
async fn until(page: &Session, what: &str, script: &str) -> Value {
    wait_for(what, PAGE_DEADLINE, || async {
        let v = page.js(script).await;
        (!v.is_null() && v != false).then_some(v)
    })
    .await
}

/// The gain of each stem's GainNode, in lane order.
async fn gains(page: &Session) -> Vec<f64> {
    let v = page
        .js("return window.dme.player.lanes.map((l) => l.gain.gain.value);")
        .await;
    v.as_array()
        .expect("gains")
        .iter()
        .map(|g| g.as_f64().expect("a gain"))
        .collect()
}

fn assert_gains(got: &[f64], expected: &[f64], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: {got:?}");
    for (g, e) in got.iter().zip(expected) {
        assert!(
            (g - e).abs() < 1e-3,
            "{what}: gains {got:?}, expected {expected:?}"
        );
    }
}

#[tokio::test]
async fn a_person_uploads_listens_mixes_and_downloads_in_a_real_browser() {
    let mut sys = System::start(DME, Options::default()).await;
    let work = tempfile::tempdir().expect("a temporary folder");
    let downloads = work.path().join("downloads");
    std::fs::create_dir(&downloads).expect("a downloads folder");
    let spec = SongSpec::new(SONG_SECONDS, 44_100, 5);
    let song_path = work.path().join("browser song.wav");
    spec.render()
        .write(&song_path, Format::Wav16)
        .expect("the song is written");

    // No separator while the page opens the song, so it is there before the first segment is
    // separated and every step of the progress reaches it live.
    let separator = sys.separators[0]
        .name()
        .trim_start_matches("separator ")
        .to_string();
    assert!(sys.kill_separator(&separator));

    let (_driver, page) = browser(&downloads).await;
    page.goto(&sys.url("/")).await;
    until(
        &page,
        "the library",
        "return document.getElementById('library-view').hidden === false;",
    )
    .await;
    // Anything the page's policy blocks, and any script error, is collected to be checked at
    // the end; the marker shows the page was never reloaded.
    page.js(
        "window.__loadedOnce = true;
         window.__errors = [];
         document.addEventListener('securitypolicyviolation',
           (e) => window.__errors.push(`blocked ${e.blockedURI} by ${e.violatedDirective}`));
         window.addEventListener('error', (e) => window.__errors.push(String(e.message)));
         window.addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason)));
         return true;",
    )
    .await;

    // Upload through the file input: the page opens the song.
    let input = page.find("#files").await;
    page.send_keys(&input, song_path.to_str().expect("a UTF-8 path"))
        .await;
    let id = until(
        &page,
        "the song view",
        "const m = /^#\\/music\\/(\\d+)$/.exec(location.hash);
         return m && !document.getElementById('song-view').hidden
           && document.getElementById('song-percent').textContent === '0%'
           && ['queued', 'separating'].includes(document.getElementById('song-state').textContent)
           ? m[1] : null;",
    )
    .await;
    let id: u64 = id.as_str().expect("an id").parse().expect("a numeric id");
    let upload = page
        .js("const li = document.querySelector('#uploads li');
             return [li.querySelector('progress').value, li.querySelector('span.muted').textContent];")
        .await;
    assert_eq!(upload, json!([100, "uploaded"]), "the file's upload bar");
    page.js("window.__progress = [];
         const percent = document.getElementById('song-percent');
         new MutationObserver(() => window.__progress.push(percent.textContent))
           .observe(percent, { childList: true, characterData: true, subtree: true });
         return true;")
        .await;
    sys.add_separator();

    // Progress rises live, then every stem gets a lane and is decoded.
    let song = sys
        .wait_music(id, "the stems", |b| {
            b["instruments"].as_array().is_some_and(|i| !i.is_empty())
        })
        .await;
    let names: Vec<String> = song["tracks"]
        .as_array()
        .expect("tracks")
        .iter()
        .map(|t| t["name"].as_str().expect("a name").to_string())
        .collect();
    let stems = names.len();
    until(
        &page,
        "every stem decoded",
        &format!(
            "return document.querySelectorAll('#lanes .lane[data-ready=true]').length === {stems};"
        ),
    )
    .await;
    let shown = page
        .js("return [...document.querySelectorAll('#lanes .lane .name')].map((n) => n.textContent);")
        .await;
    assert_eq!(shown, json!(names), "a lane per stem, in the API's order");
    let seen = page
        .js("return window.__loadedOnce === true ? window.__progress : null;")
        .await;
    let seen: Vec<u64> = seen
        .as_array()
        .expect("the page was not reloaded")
        .iter()
        .map(|p| p.as_str().unwrap().trim_end_matches('%').parse().unwrap())
        .collect();
    println!("progress the page showed, live: {seen:?}");
    let mut distinct = seen.clone();
    distinct.dedup();
    assert!(distinct.len() >= 2, "progress rose live: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress never went back: {seen:?}"
    );

    // Play: the one AudioContext's clock advances.
    page.click(&page.find("#play").await).await;
    let start = until(
        &page,
        "playback to start",
        "const p = window.dme.player;
         return p.playing && p.ctx.state === 'running' ? p.ctx.currentTime : null;",
    )
    .await;
    let start = start.as_f64().unwrap();
    let later = until(
        &page,
        "the clock to advance",
        &format!(
            "const p = window.dme.player;
             return p.ctx.currentTime > {start} + 0.5 && p.position > 0.3 ? [p.ctx.currentTime, p.position] : null;"
        ),
    )
    .await;
    println!("AudioContext clock from {start:.3} s to {later}");
    let all = vec![1.0; stems];
    assert_gains(&gains(&page).await, &all, "at start");

    // Keyboard: 1 mutes the first stem, Shift+2 solos the second (the focus on the page, not
    // on a control).
    page.js("document.activeElement.blur(); return true;").await;
    page.press("1", false).await;
    let mut expected = all.clone();
    expected[0] = 0.0;
    assert_gains(&gains(&page).await, &expected, "1 mutes stem 1");
    page.press("2", true).await;
    let mut solo = vec![0.0; stems];
    solo[1] = 1.0;
    assert_gains(&gains(&page).await, &solo, "Shift+2 solos stem 2");
    let pressed = page
        .js("return [...document.querySelectorAll('#lanes .solo')].map((b) => b.getAttribute('aria-pressed'));")
        .await;
    assert_eq!(pressed[1], "true", "{pressed}");
    page.press("2", true).await;
    page.press("1", false).await;
    assert_gains(&gains(&page).await, &all, "unsoloed and unmuted");

    // The mouse: the last stem's mute button, twice.
    let last_mute = page
        .find(&format!("#lanes .lane:nth-child({stems}) .mute"))
        .await;
    page.click(&last_mute).await;
    let mut expected = all.clone();
    expected[stems - 1] = 0.0;
    assert_gains(
        &gains(&page).await,
        &expected,
        "the last stem's mute button",
    );
    page.click(&last_mute).await;
    assert_gains(&gains(&page).await, &all, "unmuted by its button");

    // A volume slider moved by the keyboard: 12 steps of 0.5 dB down.
    let slider = page.find("#volume-1").await;
    page.send_keys(&slider, &"\u{E012}".repeat(12)).await;
    let mut expected = all.clone();
    expected[1] = 10f64.powf(-6.0 / 20.0);
    assert_gains(&gains(&page).await, &expected, "stem 2 at -6 dB");
    let db = page
        .js("return document.querySelector('#lanes .lane:nth-child(2) .db').textContent;")
        .await;
    assert_eq!(db, "-6.0 dB");

    // Every stem has a download link per format, and each serves audio.
    let links = page
        .js("return [...document.querySelectorAll('#lanes .downloads a')].map((a) => a.getAttribute('href'));")
        .await;
    let links: Vec<String> = links
        .as_array()
        .expect("links")
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert_eq!(links.len(), stems * 3, "{links:?}");
    for link in &links {
        let r = sys
            .http
            .head(sys.url(link))
            .send()
            .await
            .expect("an answer");
        assert_eq!(r.status(), 200, "{link}");
    }

    // Export the mix as FLAC: the browser downloads the file, of the song's length.
    page.click(&page.find("#mix-format option[value=flac]").await)
        .await;
    page.click(&page.find("#export-mix").await).await;
    let href = until(
        &page,
        "the mix link",
        "const a = document.getElementById('mix-link'); return a.hidden ? null : a.getAttribute('href');",
    )
    .await;
    let status = page
        .js("return document.getElementById('export-status').textContent;")
        .await;
    println!("export: {href} ({status})");
    assert_eq!(status, "Your mix is ready.", "the server took the volumes");
    let file = wait_for("the browser's download", SONG_DEADLINE, || async {
        let entries = std::fs::read_dir(&downloads).ok()?;
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "flac"))
    })
    .await;
    let bytes = std::fs::read(&file).expect("the downloaded mix");
    let mix = decode_bytes(&bytes, "flac");
    let frames = mix.left.len();
    println!(
        "downloaded {} ({} bytes): {frames} frames, {:.3} s",
        file.display(),
        bytes.len(),
        frames as f64 / 44_100.0
    );
    assert_eq!(frames, spec.frames(), "the mix lasts as long as the song");
    assert!(
        mix.left.iter().any(|s| s.abs() > 1e-3),
        "the mix is not silent"
    );

    // Space plays and pauses (the focus on the page, not on a control).
    page.js("document.activeElement.blur(); return true;").await;
    if page.js("return window.dme.player.playing;").await == true {
        page.press(" ", false).await;
        until(&page, "a pause", "return !window.dme.player.playing;").await;
    }
    page.press(" ", false).await;
    until(
        &page,
        "space to play",
        "const p = window.dme.player; return p.playing && p.position > 3;",
    )
    .await;
    page.press(" ", false).await;
    let paused_at = until(
        &page,
        "space to pause",
        "const p = window.dme.player; return p.playing ? null : p.position;",
    )
    .await;
    println!("paused at {paused_at} s");
    assert!(
        paused_at.as_f64().unwrap() > 3.0,
        "paused where it was: {paused_at}"
    );

    // The screenshot in the README, then the page at a phone's width: nothing is wider.
    page.js("window.scrollTo(0, 0); return true;").await;
    let png = page.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let shot = screenshot_path();
    std::fs::create_dir_all(shot.parent().expect("a folder")).expect("the screenshot's folder");
    std::fs::write(&shot, &png).expect("the screenshot written");
    println!("screenshot: {}", shot.display());
    page.resize(NARROW_WIDTH, WINDOW.1).await;
    let widths = until(
        &page,
        "the narrow layout",
        &format!(
            "const d = document.documentElement;
             return window.innerWidth <= {NARROW_WIDTH} ? [d.scrollWidth, d.clientWidth] : null;"
        ),
    )
    .await;
    assert!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "no sideways scrolling at {NARROW_WIDTH} px: {widths}"
    );
    let narrow = screenshot_dir().join("page-375.png");
    std::fs::create_dir_all(screenshot_dir()).expect("the screenshots' folder");
    std::fs::write(&narrow, page.screenshot().await).expect("the narrow screenshot written");

    // The library, live from /events: the song is done; its Delete button removes it.
    page.click(&page.find("#song-view .back").await).await;
    until(
        &page,
        "the song done in the library",
        "const li = [...document.querySelectorAll('#songs .song')]
           .find((s) => s.querySelector('.title').textContent === 'browser song');
         return li && li.querySelector('.state').textContent === 'done'
           && li.querySelector('.percent').textContent === '100%';",
    )
    .await;

    // The same file again opens the same song.
    page.js("location.hash = ''; return true;").await;
    let input = page.find("#files").await;
    page.send_keys(&input, song_path.to_str().expect("a UTF-8 path"))
        .await;
    until(
        &page,
        "the same song opened again",
        &format!("return location.hash === '#/music/{id}' && !document.getElementById('song-view').hidden;"),
    )
    .await;
    page.click(&page.find("#song-view .back").await).await;
    assert_eq!(
        page.js("return document.querySelectorAll('#songs .song').length;")
            .await,
        1,
        "one song in the library"
    );
    let errors = page.js("return window.__errors;").await;
    assert_eq!(errors, json!([]), "no script error and nothing blocked");

    page.click(&page.find("#songs .song .delete").await).await;
    until(
        &page,
        "the song gone from the library",
        "return document.querySelectorAll('#songs .song').length === 0;",
    )
    .await;
    assert_eq!(sys.get(&format!("/music/{id}")).await.status, 404);
    page.close().await;
}

/// A gateway with an API token: the page asks for it in its form, asks again when it is
/// refused, then lists the songs and follows `/events` with it, and keeps it for the tab.
#[tokio::test]
async fn the_page_asks_for_the_api_token_once_and_again_when_it_is_refused() {
    const TOKEN: &str = "browser-token-0123456789";
    let sys = System::start(
        DME,
        Options {
            gateway_env: env(&[("DME_API_TOKEN", TOKEN)]),
            ..Options::default()
        },
    )
    .await;
    let upload = |seed: f32, name: &'static str| {
        sys.http
            .post(sys.url(&format!("/music?name={name}")))
            .bearer_auth(TOKEN)
            .header("content-type", "application/octet-stream")
            .body(synth_wav(44_100, 44_100, seed))
            .send()
    };
    let first = upload(1.0, "first.wav").await.expect("an answer");
    assert_eq!(first.status(), 200);

    let work = tempfile::tempdir().expect("a temporary folder");
    let (_driver, page) = browser(work.path()).await;
    page.goto(&sys.url("/")).await;
    until(
        &page,
        "the token form",
        "const d = document.getElementById('token-dialog');
         return d.open && document.getElementById('token-refused').hidden
           && document.activeElement === document.getElementById('token-input')
           && document.querySelector('label[for=token-input]') !== null;",
    )
    .await;
    let input = page.find("#token-input").await;
    page.send_keys(&input, "wrong-token-0123456789\u{E007}")
        .await;
    until(
        &page,
        "the form again, saying the token was refused",
        "return document.getElementById('token-dialog').open
           && !document.getElementById('token-refused').hidden;",
    )
    .await;
    let input = page.find("#token-input").await;
    page.send_keys(&input, &format!("{TOKEN}\u{E007}")).await;
    until(
        &page,
        "the library with the token",
        "return !document.getElementById('token-dialog').open
           && document.querySelectorAll('#songs .song').length === 1;",
    )
    .await;
    assert_eq!(
        page.js("return sessionStorage.getItem('dme-token');").await,
        TOKEN
    );

    // `/events` (an EventSource, the token as `?token=`) brings a song uploaded elsewhere.
    let second = upload(2.0, "second.wav").await.expect("an answer");
    assert_eq!(second.status(), 200);
    until(
        &page,
        "the song uploaded elsewhere, live",
        "return document.querySelectorAll('#songs .song').length === 2;",
    )
    .await;

    // A reload in the same tab asks nothing.
    page.goto(&sys.url("/")).await;
    until(
        &page,
        "the library without a question",
        "return document.querySelectorAll('#songs .song').length === 2;",
    )
    .await;
    assert_eq!(
        page.js("return document.getElementById('token-dialog').open;")
            .await,
        false
    );
    page.close().await;
}

#[tokio::test]
async fn the_start_of_a_song_plays_in_the_page_while_the_rest_separates() {
    let sys = System::start(DME, Options::default()).await;
    let work = tempfile::tempdir().expect("a temporary folder");
    // 60 s: 11 segments of the default model. Its one separator is frozen once the start of
    // the stems is playable, so the song stays part-way while the page opens it.
    let song = sys
        .upload_ok(synth_wav(60 * 44_100, 44_100, 9.0), "preview.wav")
        .await;
    let id = song["music_id"].as_u64().expect("an id");
    let stems = song["tracks"].as_array().expect("tracks").len();
    let separator = sys.separators[0].id();
    sys.wait_music(id, "a playable start", |b| {
        b["ready_s"].as_f64().unwrap() > 0.0
    })
    .await;
    dme_testkit::signal(separator, libc::SIGSTOP);
    let partial = sys.at_rest(id).await;
    let ready_s = partial["ready_s"].as_f64().unwrap();
    assert!(ready_s < 60.0, "the song should be part-way: {partial}");

    let (_driver, page) = browser(work.path()).await;
    page.goto(&sys.url(&format!("/#/music/{id}"))).await;
    page.js("window.__errors = [];
         window.addEventListener('error', (e) => window.__errors.push(String(e.message)));
         window.addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason)));
         return true;")
        .await;
    until(
        &page,
        "a lane per stem holding its start",
        &format!(
            "return document.querySelectorAll('#lanes .lane[data-ready=partial]').length === {stems};"
        ),
    )
    .await;
    let shown = page
        .js("const note = document.getElementById('preview-note');
             return [note.hidden, note.textContent, window.dme.player.duration,
               [...document.querySelectorAll('#lanes .downloads')].every((d) => d.hidden)];")
        .await;
    println!("the page while the song separates: {shown}");
    assert_eq!(shown[0], false, "the preview is said: {shown}");
    assert!(
        shown[1].as_str().unwrap().contains("are separated"),
        "{shown}"
    );
    let duration = shown[2].as_f64().unwrap();
    assert!(
        (duration - ready_s).abs() < 0.002,
        "the player holds the {ready_s} s separated: {duration}"
    );
    assert_eq!(shown[3], true, "no download before the whole stem: {shown}");

    // It plays: the clock moves through the start.
    page.click(&page.find("#play").await).await;
    until(
        &page,
        "the start to play",
        "const p = window.dme.player; return p.playing && p.position > 0.3;",
    )
    .await;
    // The README's picture of it with DME_UPDATE_SCREENSHOT=1, else under target/browser/.
    let shot = match std::env::var("DME_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        true => repo_root().join("docs/page-preview.png"),
        false => screenshot_dir().join("page-preview.png"),
    };
    std::fs::create_dir_all(shot.parent().expect("a folder")).expect("the screenshot's folder");
    std::fs::write(&shot, page.screenshot().await).expect("the screenshot written");
    println!("screenshot: {}", shot.display());

    // Thawed, the whole stems replace the start where it plays, and the downloads appear.
    dme_testkit::signal(separator, libc::SIGCONT);
    until(
        &page,
        "every stem whole",
        &format!(
            "return document.querySelectorAll('#lanes .lane[data-ready=true]').length === {stems}
               && document.getElementById('preview-note').hidden;"
        ),
    )
    .await;
    let whole = page
        .js("return [window.dme.player.duration,
               document.querySelectorAll('#lanes .downloads a').length, window.__errors];")
        .await;
    assert!(
        (whole[0].as_f64().unwrap() - 60.0).abs() < 0.002,
        "the whole song: {whole}"
    );
    assert_eq!(whole[1], json!(stems * 3), "{whole}");
    assert_eq!(whole[2], json!([]), "script errors: {whole}");
}
