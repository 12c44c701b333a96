//! How long a sink waits before retrying a batch.

use super::*;

/// A small xorshift generator for retry jitter (no need for a cryptographic one).
pub(super) struct Jitter(u64);

impl Jitter {
    pub(super) fn new() -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Jitter(nanos | 1)
    }

    /// A number in `[0, 1)`.
    pub(super) fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Wait before retry `attempt` (0-based) of one batch: the sink's hint when it gave one,
/// else exponential from `initial_backoff_ms` up to `max_backoff_ms`, with jitter (half to
/// all of it) so sinks retrying together spread out.
pub(super) fn backoff(retry: &RetrySpec, attempt: u32, hint_ms: u64, jitter: &mut Jitter) -> Duration {
    if hint_ms > 0 {
        return Duration::from_millis(hint_ms.min(60_000));
    }
    let full = retry.initial_backoff_ms.saturating_mul(1u64 << attempt.min(30)).min(retry.max_backoff_ms);
    Duration::from_millis(((full as f64) * (0.5 + 0.5 * jitter.next())) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_and_follows_hints() {
        let retry = RetrySpec { initial_backoff_ms: 100, max_backoff_ms: 1000, max_duration: None };
        let mut j = Jitter::new();
        for (attempt, full) in [(0, 100), (1, 200), (2, 400), (3, 800), (4, 1000), (40, 1000)] {
            let waits: Vec<u64> = (0..50).map(|_| backoff(&retry, attempt, 0, &mut j).as_millis() as u64).collect();
            assert!(waits.iter().all(|w| *w >= full / 2 && *w <= full), "attempt {attempt}: {waits:?}");
            assert!(waits.iter().any(|w| *w != waits[0]), "jittered: {waits:?}");
        }
        assert_eq!(backoff(&retry, 3, 250, &mut j), Duration::from_millis(250));
    }
}
