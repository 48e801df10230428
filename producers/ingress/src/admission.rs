//! A bound on what the ingress holds in memory for requests in flight.
//!
//! A request keeps its body, its encoded events and librdkafka's copy of them until the broker
//! acknowledges, which takes up to the publish deadline when the broker is slow. Without a
//! bound, clients that send faster than the broker acknowledges grow the process without
//! limit: an open-loop load above the maximum rate took the ingress past 500 MB. With it, a
//! request that does not fit gets 503 with Retry-After at once, before anything is published,
//! so it is safe to send again.

use tokio::sync::{Semaphore, SemaphorePermit};

/// What a request costs beside its body: its task, its parsed parts, its answer.
pub const REQUEST_OVERHEAD_BYTES: usize = 1024;

/// The budget is counted in KiB, as a semaphore counts permits in u32.
const UNIT: usize = 1024;

/// Bytes of requests in flight, up to a budget.
#[derive(Debug)]
pub struct InFlight {
    budget: Semaphore,
}

/// The share of the budget a request holds until it is answered.
pub type Admitted<'a> = SemaphorePermit<'a>;

impl InFlight {
    /// A budget of `bytes`, which must hold the largest body a request may have.
    pub fn new(bytes: usize) -> Self {
        // try_acquire_many takes a u32: a larger budget could never be spent anyway.
        let units = (bytes / UNIT).min(u32::MAX as usize);
        Self {
            budget: Semaphore::new(units),
        }
    }

    /// Admits a request whose body is `body_len` bytes while the budget has room for it;
    /// `None` when it has not, and the request should be refused rather than queued.
    pub fn admit(&self, body_len: usize) -> Option<Admitted<'_>> {
        self.budget.try_acquire_many(cost(body_len)).ok()
    }

    /// Whether a request with a body of `body_len` bytes can ever be admitted.
    pub fn holds(bytes: usize, body_len: usize) -> bool {
        cost(body_len) as usize <= bytes / UNIT
    }
}

/// The units a request with a body of `body_len` bytes holds.
fn cost(body_len: usize) -> u32 {
    let units = (body_len + REQUEST_OVERHEAD_BYTES).div_ceil(UNIT);
    u32::try_from(units).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_admitted_while_their_bytes_fit_and_return_them_when_answered() {
        let in_flight = InFlight::new(10 * 1024);
        // 4 KiB of body and 1 KiB of overhead: two fit, a third does not.
        let first = in_flight.admit(4 * 1024).expect("room");
        let second = in_flight.admit(4 * 1024 - 1).expect("room");
        assert!(in_flight.admit(1).is_none(), "the budget is spent");
        drop(first);
        let third = in_flight.admit(3 * 1024).expect("room again");
        drop((second, third));
        assert!(in_flight.admit(9 * 1024).is_some(), "everything given back");
    }

    #[test]
    fn even_an_empty_body_costs_something() {
        let in_flight = InFlight::new(3 * 1024);
        let held: Vec<_> = (0..3).map_while(|_| in_flight.admit(0)).collect();
        assert_eq!(held.len(), 3);
        assert!(in_flight.admit(0).is_none());
    }

    #[test]
    fn a_budget_must_hold_the_largest_body() {
        assert!(InFlight::holds(1024 * 1024 + 1024, 1024 * 1024));
        assert!(!InFlight::holds(1024 * 1024, 1024 * 1024));
        assert!(!InFlight::holds(0, 0));
    }
}
