//! Live carbon intensity from the Electricity Maps API, with a timeout, a per-zone cache and
//! a back-off after failures (the caller falls back to the offline tables).
//!
//! `GET {base_url}/carbon-intensity/latest?zone=ZONE` with header `auth-token: TOKEN`; the
//! answer's `carbonIntensity` is gCO2e/kWh (lifecycle by default). The base URL is
//! configurable so that tests talk to a local server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::intensity::MAX_G_PER_KWH;

/// Default API base URL.
pub const ELECTRICITY_MAPS_BASE_URL: &str = "https://api.electricitymap.org/v3";
/// Environment variable holding the API token.
pub const ELECTRICITY_MAPS_TOKEN_ENV: &str = "ELECTRICITYMAPS_TOKEN";

/// One live reading.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderReading {
    /// gCO2e/kWh.
    pub g_per_kwh: f64,
    /// Year of the reading's `datetime`.
    pub year: Option<u16>,
    /// The reading's `datetime`, as the provider wrote it.
    pub datetime: Option<String>,
}

/// Why a provider gave no reading.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("HTTP {0} {1}")]
    Status(u16, String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("bad answer: {0}")]
    BadResponse(String),
    #[error("{0} (not retried for {1:?})")]
    BackingOff(Box<ProviderError>, Duration),
}

/// A live intensity source (behind a trait so the resolver can be tested with fakes).
pub trait LiveIntensity: Send {
    /// Provider name for reports, e.g. "Electricity Maps".
    fn name(&self) -> &str;
    /// Latest intensity for a zone.
    fn latest(&mut self, zone: &str) -> Result<ProviderReading, ProviderError>;
}

/// Settings of the Electricity Maps client.
#[derive(Clone, Debug, PartialEq)]
pub struct ElectricityMapsSettings {
    pub base_url: String,
    pub token: String,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// How long a zone's reading is reused.
    pub cache_ttl: Duration,
    /// After a failure, how long to answer with that failure without asking again.
    pub failure_backoff: Duration,
}

impl ElectricityMapsSettings {
    /// Defaults: public API, 5 s timeout, 15 min cache, 5 min back-off.
    pub fn new(token: String) -> Self {
        Self {
            base_url: ELECTRICITY_MAPS_BASE_URL.to_string(),
            token,
            timeout: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(15 * 60),
            failure_backoff: Duration::from_secs(5 * 60),
        }
    }
}

/// Electricity Maps client (blocking; at most one request per zone per cache period, so the
/// session loop may call it directly or from `spawn_blocking`).
pub struct ElectricityMaps {
    settings: ElectricityMapsSettings,
    agent: ureq::Agent,
    cache: HashMap<String, (Instant, Result<ProviderReading, ProviderError>)>,
    requests: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LatestAnswer {
    carbon_intensity: Option<f64>,
    datetime: Option<String>,
}

impl ElectricityMaps {
    pub fn new(settings: ElectricityMapsSettings) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            .build();
        Self { settings, agent: ureq::Agent::new_with_config(config), cache: HashMap::new(), requests: 0 }
    }

    /// HTTP requests sent so far (for tests and `doctor`).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    fn fetch(&mut self, zone: &str) -> Result<ProviderReading, ProviderError> {
        self.requests += 1;
        let url = format!("{}/carbon-intensity/latest", self.settings.base_url.trim_end_matches('/'));
        let result =
            self.agent.get(&url).query("zone", zone).header("auth-token", &self.settings.token).call();
        let mut resp = result.map_err(|e| match e {
            ureq::Error::Timeout(_) => ProviderError::Timeout(self.settings.timeout),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                ProviderError::Timeout(self.settings.timeout)
            }
            other => ProviderError::Transport(other.to_string()),
        })?;
        let status = resp.status();
        let body = resp.body_mut().with_config().limit(1 << 20).read_to_string().map_err(|e| match e {
            ureq::Error::Timeout(_) => ProviderError::Timeout(self.settings.timeout),
            other => ProviderError::Transport(other.to_string()),
        })?;
        if !status.is_success() {
            let reason = status.canonical_reason().unwrap_or("").to_string();
            let hint = if status.as_u16() == 401 || status.as_u16() == 403 {
                format!(" (check {ELECTRICITY_MAPS_TOKEN_ENV} and the zone {zone:?} of your plan)")
            } else {
                String::new()
            };
            return Err(ProviderError::Status(status.as_u16(), format!("{reason}{hint}")));
        }
        parse_latest(&body)
    }
}

/// Parses the body of a successful `carbon-intensity/latest` answer. The intensity must be a
/// number from 0 to [`MAX_G_PER_KWH`]; the year is read from `datetime` when it starts with
/// four digits (`2026-11-28T23:00:00.000Z`).
pub fn parse_latest(body: &str) -> Result<ProviderReading, ProviderError> {
    let bad_json = |e: serde_json::Error| ProviderError::BadResponse(format!("not the expected JSON: {e}"));
    // An object only: serde would also read a struct from an array (`[81.4, ""]`).
    let value: serde_json::Value = serde_json::from_str(body).map_err(bad_json)?;
    if !value.is_object() {
        return Err(ProviderError::BadResponse("not the expected JSON: not an object".to_string()));
    }
    let answer = LatestAnswer::deserialize(value).map_err(bad_json)?;
    let g = answer.carbon_intensity.filter(|v| (0.0..=MAX_G_PER_KWH).contains(v)).ok_or_else(|| {
        ProviderError::BadResponse(format!(
            "no valid `carbonIntensity` (gCO2e/kWh from 0 to {MAX_G_PER_KWH})"
        ))
    })?;
    let year = answer
        .datetime
        .as_deref()
        .and_then(|d| d.get(..4))
        .filter(|y| y.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|y| y.parse().ok());
    Ok(ProviderReading { g_per_kwh: g, year, datetime: answer.datetime })
}

impl LiveIntensity for ElectricityMaps {
    fn name(&self) -> &str {
        "Electricity Maps"
    }

    fn latest(&mut self, zone: &str) -> Result<ProviderReading, ProviderError> {
        if let Some((at, cached)) = self.cache.get(zone) {
            let keep = match cached {
                Ok(_) => self.settings.cache_ttl,
                Err(_) => self.settings.failure_backoff,
            };
            if at.elapsed() < keep {
                return cached.clone().map_err(|e| match e {
                    ProviderError::BackingOff(..) => e,
                    e => ProviderError::BackingOff(Box::new(e), keep),
                });
            }
        }
        let result = self.fetch(zone);
        self.cache.insert(zone.to_string(), (Instant::now(), result.clone()));
        result
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A local HTTP server answering each connection with the next canned response (or
    /// sleeping past the client's timeout for `None`). Returns its base URL and the request
    /// heads it saw.
    pub(crate) fn serve(responses: Vec<Option<(u16, &'static str)>>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for response in responses {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen2.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                match response {
                    Some((code, body)) => {
                        let _ = write!(
                            conn,
                            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                             Connection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    None => std::thread::sleep(Duration::from_millis(1500)),
                }
            }
        });
        (format!("http://{addr}/v3"), seen)
    }

    fn client(base: String) -> ElectricityMaps {
        ElectricityMaps::new(ElectricityMapsSettings {
            base_url: base,
            token: "secret-token".into(),
            timeout: Duration::from_millis(300),
            cache_ttl: Duration::from_secs(600),
            failure_backoff: Duration::ZERO,
        })
    }

    #[test]
    fn success_is_parsed_sent_with_token_and_cached() {
        let body =
            r#"{"zone":"FR","carbonIntensity":42,"datetime":"2026-11-28T23:00:00.000Z","isEstimated":true}"#;
        let (base, seen) = serve(vec![Some((200, body))]);
        let mut c = client(base);
        let r = c.latest("FR").unwrap();
        assert_eq!(
            r,
            ProviderReading {
                g_per_kwh: 42.0,
                year: Some(2026),
                datetime: Some("2026-11-28T23:00:00.000Z".into())
            }
        );
        assert_eq!(c.latest("FR").unwrap().g_per_kwh, 42.0, "second call from the cache");
        assert_eq!(c.requests(), 1);
        let head = seen.lock().unwrap()[0].to_ascii_lowercase();
        assert!(head.starts_with("get /v3/carbon-intensity/latest?zone=fr http/1.1"), "{head}");
        assert!(head.contains("auth-token: secret-token"), "{head}");
    }

    #[test]
    fn unauthorized_is_a_status_error_with_a_hint() {
        let (base, _) = serve(vec![Some((401, r#"{"message":"bad token"}"#))]);
        let e = client(base).latest("FR").unwrap_err();
        assert!(matches!(e, ProviderError::Status(401, _)), "{e:?}");
        assert!(e.to_string().contains("check ELECTRICITYMAPS_TOKEN"), "{e}");
    }

    #[test]
    fn bad_json_and_missing_field_are_bad_responses() {
        let (base, _) = serve(vec![Some((200, "<html>oops</html>")), Some((200, r#"{"zone":"FR"}"#))]);
        let mut c = client(base);
        assert!(matches!(c.latest("FR"), Err(ProviderError::BadResponse(_))));
        let e = c.latest("FR").unwrap_err();
        assert_eq!(e.to_string(), "bad answer: no valid `carbonIntensity` (gCO2e/kWh from 0 to 10000)");
        assert_eq!(c.requests(), 2, "failures are retried after the (zero) back-off");
    }

    #[test]
    fn answers_are_checked_field_by_field() {
        let r = parse_latest(r#"{"carbonIntensity":0,"datetime":"2026-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!((r.g_per_kwh, r.year), (0.0, Some(2026)));
        // u16's parser takes a sign: `+202` is no year.
        let r = parse_latest(r#"{"carbonIntensity":12.5,"datetime":"+202-01-01"}"#).unwrap();
        assert_eq!((r.g_per_kwh, r.year), (12.5, None));
        assert_eq!(parse_latest(r#"{"carbonIntensity":5,"datetime":"ñ"}"#).unwrap().year, None);
        for bad in
            [r#"{"carbonIntensity":-1}"#, r#"{"carbonIntensity":1e300}"#, r#"{"carbonIntensity":null}"#]
        {
            assert!(matches!(parse_latest(bad), Err(ProviderError::BadResponse(_))), "{bad}");
        }
        // serde reads a struct from an array too: `[intensity, datetime]` is no answer.
        let e = parse_latest(r#"[81.4,""]"#).unwrap_err();
        assert_eq!(e.to_string(), "bad answer: not the expected JSON: not an object");
    }

    #[test]
    fn timeout_is_reported_and_then_backed_off() {
        let (base, _) = serve(vec![None]);
        let mut c = client(base);
        c.settings.failure_backoff = Duration::from_secs(600);
        let started = Instant::now();
        let e = c.latest("FR").unwrap_err();
        assert!(matches!(e, ProviderError::Timeout(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_millis(1400), "the client gave up at its timeout");
        let again = c.latest("FR").unwrap_err();
        assert!(matches!(again, ProviderError::BackingOff(..)), "{again:?}");
        assert_eq!(c.requests(), 1);
    }

    #[test]
    fn connection_refused_is_a_transport_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = client(format!("http://{addr}")).latest("FR").unwrap_err();
        assert!(matches!(e, ProviderError::Transport(_)), "{e:?}");
    }
}
