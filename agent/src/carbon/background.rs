//! A live intensity provider on a thread of its own: it asks for its zone at start and then
//! every [`REFRESH`], and the interval reads the latest answer without waiting for the network.

use std::{
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use super::provider::{LiveIntensity, ProviderError, ProviderReading};

/// How often the thread asks its provider again (the provider's own cache decides whether
/// that is a request).
pub const REFRESH: Duration = Duration::from_secs(60);

type Latest = Arc<Mutex<Option<Result<ProviderReading, ProviderError>>>>;

pub struct BackgroundIntensity {
    name: String,
    zone: String,
    latest: Latest,
    /// Dropped with this value: the thread then stops.
    _stop: mpsc::Sender<()>,
}

impl BackgroundIntensity {
    /// Starts asking `provider` for `zone`, every `refresh`; waits up to `first_wait` for the
    /// first answer (at start-up, so that the first interval already has it).
    pub fn spawn(
        mut provider: Box<dyn LiveIntensity>,
        zone: String,
        refresh: Duration,
        first_wait: Duration,
    ) -> Self {
        let name = provider.name().to_string();
        let latest: Latest = Arc::default();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (first_tx, first_rx) = mpsc::channel::<()>();
        let (shared, z) = (latest.clone(), zone.clone());
        let spawned = std::thread::Builder::new().name("intensity".into()).spawn(move || {
            loop {
                let answer = provider.latest(&z);
                if let Ok(mut l) = shared.lock() {
                    *l = Some(answer);
                }
                let _ = first_tx.send(());
                match stop_rx.recv_timeout(refresh) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        });
        match spawned {
            Ok(_) => {
                let _ = first_rx.recv_timeout(first_wait);
            }
            Err(e) => {
                if let Ok(mut l) = latest.lock() {
                    *l = Some(Err(ProviderError::Transport(format!("cannot start its thread: {e}"))));
                }
            }
        }
        Self { name, zone, latest, _stop: stop_tx }
    }
}

impl LiveIntensity for BackgroundIntensity {
    fn name(&self) -> &str {
        &self.name
    }

    fn latest(&mut self, zone: &str) -> Result<ProviderReading, ProviderError> {
        if zone != self.zone {
            return Err(ProviderError::BadResponse(format!("asked for zone {zone}, follows {}", self.zone)));
        }
        match self.latest.lock().ok().and_then(|l| l.clone()) {
            Some(answer) => answer,
            None => Err(ProviderError::Transport("no answer yet".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers after `delay`, with an intensity that counts the requests.
    struct Slow {
        delay: Duration,
        calls: Arc<Mutex<u32>>,
    }

    impl LiveIntensity for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        fn latest(&mut self, _: &str) -> Result<ProviderReading, ProviderError> {
            std::thread::sleep(self.delay);
            let mut c = self.calls.lock().unwrap();
            *c += 1;
            Ok(ProviderReading { g_per_kwh: f64::from(*c), year: None, datetime: None })
        }
    }

    #[test]
    fn the_tick_never_waits_for_the_provider() {
        let calls = Arc::new(Mutex::new(0));
        let slow = Slow { delay: Duration::from_millis(300), calls: calls.clone() };
        // No wait at start: the first reads find no answer yet, and return at once.
        let mut b = BackgroundIntensity::spawn(
            Box::new(slow),
            "FR".into(),
            Duration::from_millis(50),
            Duration::ZERO,
        );
        let t = std::time::Instant::now();
        let first = b.latest("FR");
        assert!(t.elapsed() < Duration::from_millis(100), "{:?}", t.elapsed());
        assert_eq!(first.unwrap_err().to_string(), "request failed: no answer yet");
        // Later answers replace earlier ones.
        let start = std::time::Instant::now();
        while b.latest("FR").map_or(0.0, |r| r.g_per_kwh) < 2.0 {
            assert!(start.elapsed() < Duration::from_secs(30), "no second answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(b.latest("DE").is_err());
        drop(b);
    }

    #[test]
    fn the_first_answer_is_waited_for_at_start() {
        let slow = Slow { delay: Duration::from_millis(10), calls: Arc::default() };
        let mut b = BackgroundIntensity::spawn(Box::new(slow), "FR".into(), REFRESH, Duration::from_secs(30));
        assert_eq!(b.latest("FR").unwrap().g_per_kwh, 1.0);
        assert_eq!(b.name(), "slow");
    }
}
