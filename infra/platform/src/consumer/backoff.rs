use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);

/// The wait before retry number `attempt` (1 = the first retry): doubling from 100 ms up to
/// `max`, then scaled into its upper half by `jitter` (uniform in `[0, 1)`), so members that
/// failed together do not retry together. Pure: the caller draws the random number.
pub fn backoff(attempt: u32, max: Duration, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20);
    let ceiling = FIRST.saturating_mul(1 << doublings).min(max);
    ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_stays_under_the_cap() {
        let max = Duration::from_secs(30);
        assert_eq!(backoff(1, max, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(2, max, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(5, max, 1.0), Duration::from_millis(1600));
        assert_eq!(backoff(40, max, 1.0), max);
        assert_eq!(backoff(u32::MAX, max, 1.0), max);
    }

    #[test]
    fn jitter_spreads_waits_over_the_upper_half() {
        let max = Duration::from_secs(30);
        assert_eq!(backoff(3, max, 0.0), Duration::from_millis(200));
        assert!(backoff(3, max, 0.5) > Duration::from_millis(200));
        assert!(backoff(3, max, 0.999) <= Duration::from_millis(400));
    }
}
