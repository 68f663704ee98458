//! Receiving an upload: spooled to a temporary file while it arrives (bounded memory), hashed
//! with blake3 on the way, limited in size, then probed.

use std::path::Path;

use actix_web::{web, HttpRequest};
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::body::{next_or_stuck, until_stuck, BodyWatch, MAX_MULTIPART_FRAMING_BYTES};
use crate::{ApiError, AppState};

/// Form fields a multipart upload may carry (the file among them): a browser form sends a few; a
/// long run of them is someone probing the parser.
const MAX_FORM_FIELDS: usize = 64;

/// An upload on disk.
pub struct Spooled {
    /// The temporary file (deleted on drop).
    pub file: tempfile::TempPath,
    /// Its blake3 hash.
    pub hash: blake3::Hash,
    /// Its size in bytes.
    pub size: u64,
    /// The client's file name, sanitised (may be empty).
    pub file_name: String,
}

/// Receives the body of `POST /music`: raw bytes (any content type but multipart) or the first
/// file field of a `multipart/form-data` form (the rest of the form is read past, so the
/// connection can serve another request).
pub async fn receive(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Spooled, ApiError> {
    let multipart = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let limit = state.config.max_upload_bytes;
    let watch = BodyWatch::of(req);
    // A body announced larger than any acceptable one is refused before a byte of it is read.
    let framing = if multipart {
        MAX_MULTIPART_FRAMING_BYTES
    } else {
        0
    };
    if content_length(req).is_some_and(|n| n > limit.saturating_add(framing)) {
        return Err(too_large(limit));
    }
    if !multipart {
        let file_name = raw_file_name(req);
        let stream = payload.map(|chunk| chunk.map_err(|e| watch.error("upload interrupted", e)));
        return spool(stream, file_name, state).await;
    }
    watch.limit_framing(MAX_MULTIPART_FRAMING_BYTES);
    let malformed = |e: actix_multipart::MultipartError| watch.error("malformed multipart body", e);
    let mut form = actix_multipart::Multipart::new(req.headers(), payload);
    let mut fields = 0;
    let mut field_bytes = 0u64;
    let mut spooled = None;
    while let Some(field) = next_or_stuck(&mut form, &watch).await? {
        let mut field = field.map_err(malformed)?;
        fields += 1;
        if fields > MAX_FORM_FIELDS {
            return Err(ApiError::BadRequest(format!(
                "more than {MAX_FORM_FIELDS} form fields"
            )));
        }
        let cd = field.content_disposition().cloned();
        let file_name = cd
            .as_ref()
            .and_then(|cd| cd.get_filename())
            .map(sanitise_file_name);
        let is_file = file_name.is_some()
            || cd
                .as_ref()
                .and_then(|cd| cd.get_name())
                .is_some_and(|n| n == "file");
        if !is_file || spooled.is_some() {
            // A plain form field (or a second file): read past, its bytes counted against the
            // upload limit.
            while let Some(chunk) = next_or_stuck(&mut field, &watch).await? {
                let chunk = chunk.map_err(malformed)?;
                watch.consume(chunk.len());
                field_bytes += chunk.len() as u64;
                if field_bytes > limit {
                    return Err(too_large(limit));
                }
            }
            continue;
        }
        let content = field.map(|chunk| {
            let chunk = chunk.map_err(|e| watch.error("upload interrupted", e))?;
            watch.consume(chunk.len());
            Ok(chunk)
        });
        let content = until_stuck(content, watch.clone());
        spooled = Some(spool(content, file_name.unwrap_or_default(), state).await?);
    }
    spooled.ok_or_else(|| ApiError::BadRequest("multipart body has no file field".into()))
}

/// The request's `Content-Length`, when it states one.
fn content_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn too_large(limit: u64) -> ApiError {
    ApiError::TooLarge(format!("upload exceeds the limit of {limit} bytes"))
}

/// Spools `body` to a temporary file of this process's spool folder, hashing it, within the
/// upload limit.
///
/// # Errors
/// 413 beyond the limit, 400 for an empty body, what the stream yields, 500 when the disk fails.
pub(crate) async fn spool<S>(
    mut body: S,
    file_name: String,
    state: &AppState,
) -> Result<Spooled, ApiError>
where
    S: Stream<Item = Result<web::Bytes, ApiError>> + Unpin,
{
    let temp = state
        .spool
        .named_tempfile()
        .map_err(|e| ApiError::Internal(e.into()))?;
    let (std_file, path) = temp.into_parts();
    let mut file = tokio::fs::File::from_std(std_file);
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let limit = state.config.max_upload_bytes;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large(limit));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    if size == 0 {
        return Err(ApiError::BadRequest(
            "empty upload: send the audio file as the request body".into(),
        ));
    }
    Ok(Spooled {
        file: path,
        hash: hasher.finalize(),
        size,
        file_name,
    })
}

/// The file name of a raw upload: `?name=`, else `X-File-Name`, else a Content-Disposition
/// filename.
fn raw_file_name(req: &HttpRequest) -> String {
    let from_query =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("name").cloned());
    let from_header = || {
        req.headers()
            .get("x-file-name")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let from_cd = || {
        req.headers()
            .get(actix_web::http::header::CONTENT_DISPOSITION)
            .and_then(|v| actix_web::http::header::ContentDisposition::from_raw(v).ok())
            .and_then(|cd| cd.get_filename().map(str::to_string))
    };
    from_query
        .or_else(from_header)
        .or_else(from_cd)
        .map(|n| sanitise_file_name(&n))
        .unwrap_or_default()
}

/// Longest file name kept from a client: longer than any real song file name, short enough for
/// every file system and log line.
const MAX_FILE_NAME_CHARS: usize = 200;

/// Longest extension taken as a decoder hint (`flac`, `opus`, `aiff`): longer ones are not audio
/// extensions.
const MAX_EXTENSION_CHARS: usize = 5;

/// The last path component of a client-supplied name, cleaned as [`sanitise_text`] cleans
/// text, without leading dots: never a path, never a hidden file.
pub fn sanitise_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    sanitise_text(base)
        .trim_start_matches('.')
        .trim()
        .to_string()
}

/// Text a client chose (a file name, a title or artist tag), fit to show and to log: without
/// control characters (NUL, CR, LF, ESC, ...), line and paragraph separators, or the invisible
/// marks that reorder or hide text (bidirectional overrides and isolates such as U+202E, which
/// make `evil\u{202E}3pm.exe` read `evilexe.mp3`; zero-width spaces and joiners of words), at
/// most [`MAX_FILE_NAME_CHARS`] characters, trimmed. The zero-width (non-)joiners that emoji
/// sequences and some scripts need are kept.
pub fn sanitise_text(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c) && !is_invisible(*c))
        .take(MAX_FILE_NAME_CHARS)
        .collect();
    clean.trim().to_string()
}

/// Characters that take no room or break lines where a name is shown: the zero-width space,
/// the word joiner, the byte-order mark, and the line and paragraph separators.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}' | '\u{2060}' | '\u{FEFF}' | '\u{2028}' | '\u{2029}'
    )
}

/// Unicode's bidirectional formatting characters (UAX #9): marks, embeddings, overrides and
/// isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The extension of a file name, lower-case, as a decoder hint.
pub fn extension(name: &str) -> Option<String> {
    Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .filter(|e| e.len() <= MAX_EXTENSION_CHARS)
}

/// Probes a spooled upload off the async executor.
pub async fn probe(spooled: &Spooled) -> Result<dme_audio::Probe, ApiError> {
    let path = spooled.file.to_path_buf();
    let hint = extension(&spooled.file_name);
    let probe = tokio::task::spawn_blocking(move || dme_audio::probe_path(&path, hint.as_deref()))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    use dme_audio::AudioError;
    match probe {
        Ok(p) if p.frames == 0 => Err(ApiError::Unsupported(
            "the file holds no audio samples".into(),
        )),
        Ok(p) => Ok(p),
        Err(AudioError::Empty) => Err(ApiError::BadRequest("empty upload".into())),
        Err(e @ AudioError::DecoderPanicked { .. }) => {
            // The message the client sees is stable; the panic's text is for us.
            if let AudioError::DecoderPanicked { detail } = &e {
                tracing::warn!(detail, "a decoder panicked on an upload");
            }
            Err(ApiError::Unsupported(e.to_string()))
        }
        Err(
            e @ (AudioError::NotAudio(_)
            | AudioError::UnsupportedCodec(_)
            | AudioError::BadHeader(_)
            | AudioError::Corrupt(_)
            | AudioError::NoSamples),
        ) => Err(ApiError::Unsupported(e.to_string())),
        Err(e) => Err(ApiError::Internal(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_never_carry_paths() {
        assert_eq!(sanitise_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitise_file_name("C:\\x\\song.mp3"), "song.mp3");
        assert_eq!(sanitise_file_name("..hidden\u{0}.mp3"), "hidden.mp3");
        assert_eq!(sanitise_file_name("evil\u{202E}3pm.exe"), "evil3pm.exe");
        assert_eq!(
            sanitise_file_name("a\r\nSet-Cookie: x=1.mp3"),
            "aSet-Cookie: x=1.mp3"
        );
        assert_eq!(
            sanitise_file_name(&"é".repeat(500)).chars().count(),
            MAX_FILE_NAME_CHARS
        );
        assert_eq!(sanitise_text(" \u{2066}Title\u{2069}\u{0}\n "), "Title");
        assert_eq!(sanitise_text("Björk – Jóga 🎵"), "Björk – Jóga 🎵");
        assert_eq!(sanitise_text("a\u{200B}b\u{2028}c\u{FEFF}"), "abc");
        assert_eq!(sanitise_text("👩\u{200D}🎤"), "👩\u{200D}🎤");
        assert_eq!(extension("a.MP3").as_deref(), Some("mp3"));
    }
}
