//! What the two HTTP providers share: the client, the body cap, and the mapping from HTTP
//! responses to [`ProviderError`] classes (documented in crates/providers/README.md).

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::{ConfigError, ProviderArgs, ProviderError};

/// Largest response body read. A model answer is kilobytes; anything past this is a broken
/// or hostile server, treated as transient ("response too large").
pub(crate) const MAX_BODY: usize = 8 * 1024 * 1024;
/// Provider messages kept in errors (and so in dead letters) are cut to this many chars.
const MAX_MESSAGE: usize = 500;

pub(crate) fn client(args: &ProviderArgs) -> Result<reqwest::Client, ConfigError> {
    // reqwest is built without a crypto provider (Cargo.toml): ring, the one Redis's TLS
    // uses. Err means one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(args.connect_timeout())
        .timeout(args.request_timeout())
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| ConfigError::Client(e.to_string()))
}

/// The base URL without a trailing slash or `/v1`, so that `http://host:11434/v1` and
/// `http://host:11434` both work; the providers append `/v1/...` themselves.
pub(crate) fn normalize_base(url: &str) -> Result<String, ConfigError> {
    let trimmed = url.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
    let parsed = reqwest::Url::parse(trimmed).map_err(|e| ConfigError::BaseUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ConfigError::BaseUrl {
            url: url.to_owned(),
            reason: "expected http:// or https:// with a host".to_owned(),
        });
    }
    Ok(trimmed.to_owned())
}

/// Sends the request and returns the body of a 2xx response with how long the provider
/// says the account's quota stays exhausted (if it says so), or the classified error.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(Vec<u8>, Option<Duration>), ProviderError> {
    let mut response = request.send().await.map_err(|e| ProviderError::Transient {
        message: describe_reqwest(&e),
        retry_after: None,
    })?;
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(ProviderError::Transient {
                        message: format!("response too large (over {MAX_BODY} bytes)"),
                        retry_after: None,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ProviderError::Transient {
                    message: format!("reading the response body failed: {}", describe_reqwest(&e)),
                    retry_after: None,
                });
            }
        }
    }
    if status.is_success() {
        return Ok((body, exhausted_for(&headers)));
    }
    Err(classify(status, &headers, &body))
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "request timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        // Without the URL: it is ours, and the caller knows it.
        let mut text = e.to_string();
        if let Some(url) = e.url() {
            text = text.replace(url.as_str(), "<provider>");
        }
        text
    }
}

/// Maps a non-2xx response to its class.
pub(crate) fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let message = error_message(body, status);
    let code = status.as_u16();
    let overloaded_body = body_error_type(body).as_deref() == Some("overloaded_error");
    match code {
        429 => ProviderError::RateLimited {
            status: code,
            message,
            retry_after: retry_after(headers),
        },
        529 | 503 => ProviderError::Overloaded {
            status: code,
            message,
            retry_after: retry_after(headers),
        },
        _ if overloaded_body => ProviderError::Overloaded {
            status: code,
            message,
            retry_after: retry_after(headers),
        },
        408 | 409 | 500..=599 => ProviderError::Transient {
            message: format!("HTTP {code}: {message}"),
            retry_after: retry_after(headers),
        },
        _ => ProviderError::Permanent {
            status: code,
            message,
        },
    }
}

/// `error.message` of either provider's error object, else the start of the body.
fn error_message(body: &[u8], status: StatusCode) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message"))
        .and_then(|m| m.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("no body").to_owned()
            } else {
                text.to_owned()
            }
        });
    truncate(&message)
}

fn body_error_type(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.pointer("/error/type")?.as_str().map(str::to_owned)
}

pub(crate) fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_MESSAGE).collect();
    cut.push('…');
    cut
}

/// How long the provider asks us to wait: `Retry-After` (seconds or an HTTP date), else the
/// longest of the providers' reset headers.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = header("retry-after") {
        if let Some(wait) = value.parse::<f64>().ok().and_then(seconds) {
            return Some(wait);
        }
        if let Ok(at) = httpdate::parse_http_date(value) {
            return Some(
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
                    .min(LONGEST_WAIT),
            );
        }
    }
    let openai = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|h| header(h).and_then(parse_go_duration));
    let anthropic = [
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
    ]
    .iter()
    .filter_map(|h| header(h).and_then(parse_rfc3339_wait));
    openai.chain(anthropic).max()
}

/// When a successful response reports a remaining quota of zero, the wait until that quota
/// resets (the matching reset header; one second when it names none).
pub(crate) fn exhausted_for(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let zero = |name: &str| header(name).and_then(|v| v.parse::<f64>().ok()) == Some(0.0);
    let openai = [
        (
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ]
    .iter()
    .filter(|(remaining, _)| zero(remaining))
    .map(|(_, reset)| {
        header(reset)
            .and_then(parse_go_duration)
            .unwrap_or(Duration::from_secs(1))
    });
    let anthropic = ["requests", "tokens", "input-tokens", "output-tokens"]
        .iter()
        .filter(|kind| zero(&format!("anthropic-ratelimit-{kind}-remaining")))
        .map(|kind| {
            header(&format!("anthropic-ratelimit-{kind}-reset"))
                .and_then(parse_rfc3339_wait)
                .unwrap_or(Duration::from_secs(1))
        });
    openai.chain(anthropic).max()
}

/// OpenAI's reset headers: Go-style durations such as `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub(crate) fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    seconds(total)
}

/// The longest wait a provider's header is taken to mean; anything longer (`Retry-After:
/// 1e30`) is read as this, and the retry policy clamps it further (`--backoff-max-ms`).
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A wait in seconds from a header: never panics, whatever the provider sent. Negative or
/// not a number: not a wait. Too long: [`LONGEST_WAIT`].
fn seconds(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    Some(
        Duration::try_from_secs_f64(secs)
            .unwrap_or(LONGEST_WAIT)
            .min(LONGEST_WAIT),
    )
}

/// Anthropic's reset headers: RFC 3339 timestamps (`2026-11-24T13:40:05Z`); the wait until then.
pub(crate) fn parse_rfc3339_wait(text: &str) -> Option<Duration> {
    let at = parse_rfc3339(text)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(LONGEST_WAIT),
    )
}

fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    // YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |s: &str| s.parse::<i64>().ok();
    let (year, month, day) = (num(&text[0..4])?, num(&text[5..7])?, num(&text[8..10])?);
    let (hour, min, sec) = (
        num(&text[11..13])?,
        num(&text[14..16])?,
        num(&text[17..19])?,
    );
    let mut rest = &text[19..];
    let mut frac = 0f64;
    if let Some(r) = rest.strip_prefix('.') {
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        frac = format!("0.{}", &r[..end]).parse().ok()?;
        rest = &r[end..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (num(&rest[1..3])? * 3600 + num(&rest[4..6])? * 60)
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))?
        .checked_add(seconds(frac)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_wait_headers_never_panic_and_are_capped() {
        let wait = |name: &'static str, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, reqwest::header::HeaderValue::from_static(value));
            retry_after(&headers)
        };
        for value in ["1e30", "inf", "1e400", "18446744073709551616"] {
            assert_eq!(wait("retry-after", value), Some(LONGEST_WAIT), "{value}");
        }
        for value in ["NaN", "-5", "-inf", "soon", ""] {
            assert_eq!(wait("retry-after", value), None, "{value}");
        }
        assert_eq!(
            wait("x-ratelimit-reset-requests", "99999999999999999999999h"),
            Some(LONGEST_WAIT)
        );
        assert_eq!(wait("x-ratelimit-reset-tokens", "1.5.5s"), None);
        assert_eq!(
            wait("anthropic-ratelimit-requests-reset", "9999-12-31T23:59:59Z"),
            Some(LONGEST_WAIT)
        );
        assert_eq!(
            wait("anthropic-ratelimit-requests-reset", "2026-13-99T99:99:99Z"),
            None
        );
    }

    #[test]
    fn exhausted_quota_headers_name_the_wait() {
        let mut headers = HeaderMap::new();
        assert_eq!(exhausted_for(&headers), None);
        headers.insert("x-ratelimit-remaining-requests", "3".parse().unwrap());
        headers.insert("x-ratelimit-reset-requests", "2s".parse().unwrap());
        assert_eq!(exhausted_for(&headers), None);
        headers.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        assert_eq!(exhausted_for(&headers), Some(Duration::from_secs(2)));
        let mut headers = HeaderMap::new();
        headers.insert("anthropic-ratelimit-tokens-remaining", "0".parse().unwrap());
        assert_eq!(exhausted_for(&headers), Some(Duration::from_secs(1)));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn rfc3339_timestamps() {
        let t = parse_rfc3339("1970-01-02T00:00:01Z").unwrap();
        assert_eq!(t, SystemTime::UNIX_EPOCH + Duration::from_secs(86_401));
        let t = parse_rfc3339("1970-01-01T01:00:00+01:00").unwrap();
        assert_eq!(t, SystemTime::UNIX_EPOCH);
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn base_urls_with_or_without_v1() {
        assert_eq!(
            normalize_base("http://h:11434/v1/").unwrap(),
            "http://h:11434"
        );
        assert_eq!(
            normalize_base("https://api.openai.com").unwrap(),
            "https://api.openai.com"
        );
        assert!(normalize_base("ftp://x").is_err());
        assert!(normalize_base("not a url").is_err());
    }

    #[test]
    fn statuses_map_to_classes() {
        let h = HeaderMap::new();
        let e = |code: u16, body: &str| {
            classify(StatusCode::from_u16(code).unwrap(), &h, body.as_bytes())
        };
        assert!(matches!(e(429, "{}"), ProviderError::RateLimited { .. }));
        assert!(matches!(e(529, "{}"), ProviderError::Overloaded { .. }));
        assert!(matches!(e(500, "{}"), ProviderError::Transient { .. }));
        assert!(matches!(e(408, "{}"), ProviderError::Transient { .. }));
        assert!(matches!(e(409, "{}"), ProviderError::Transient { .. }));
        for code in [400, 401, 403, 404, 413, 422] {
            assert!(
                matches!(e(code, "{}"), ProviderError::Permanent { .. }),
                "{code}"
            );
        }
        match e(
            400,
            r#"{"error":{"type":"invalid_request_error","message":"max_tokens: too big"}}"#,
        ) {
            ProviderError::Permanent { message, .. } => assert_eq!(message, "max_tokens: too big"),
            other => panic!("{other:?}"),
        }
    }
}
