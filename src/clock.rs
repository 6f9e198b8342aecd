//! The clock, read at most once per turn of a client connection's task: everything a poll of the connection does
//! (a request's start, its upstream deadline and balancing, its spans' ends, its end, the connection's idle and
//! header timers) takes the same reading, as nginx reads its clock once per turn of its event loop. Outside a
//! turn, [`now`] is the clock itself.
//!
//! A forwarded request read the clock six times in its two polls (the request arrives; the answer does); each read
//! is a vDSO call and ~60 instructions with its conversions (callgrind, bench/README.md's fourteenth round). A
//! reading is at most one poll old: microseconds, more when one poll serves several pipelined requests or HTTP/2
//! streams or checks signatures, still far below any timeout here. Durations are measured between polls: an
//! answer made in the poll its request arrived in is counted as taking no time.
//!
//! Written here because neither tokio nor a well-kept crate offers a per-poll cached clock (coarse clocks such as
//! `CLOCK_MONOTONIC_COARSE` tick every few milliseconds instead, and would hide every request's duration).

use std::cell::Cell;

use tokio::time::Instant;

thread_local! {
    /// `None` outside a turn; in a turn, its reading once taken.
    static TURN: Cell<Option<Option<Instant>>> = const { Cell::new(None) };
}

/// The time: the current turn's reading (taken now if it is the turn's first), or the clock outside a turn.
pub fn now() -> Instant {
    TURN.with(|turn| match turn.get() {
        None => Instant::now(),
        Some(Some(read)) => read,
        Some(None) => {
            let read = Instant::now();
            turn.set(Some(Some(read)));
            read
        }
    })
}

/// Runs `f` as one turn: every [`now`] in it (on this thread) returns the same reading.
pub fn turn<R>(f: impl FnOnce() -> R) -> R {
    /// Puts back the state before the turn, also when `f` panics.
    struct Restore(Option<Option<Instant>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            TURN.with(|turn| turn.set(self.0));
        }
    }
    let _restore = Restore(TURN.with(|turn| turn.replace(Some(None))));
    f()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_turn_reads_the_clock_once_and_only_when_asked() {
        let (asked, first, second) = turn(|| {
            // Not read when the turn began: the first call reads it.
            std::thread::sleep(Duration::from_millis(2));
            let asked = Instant::now();
            let first = now();
            std::thread::sleep(Duration::from_millis(2));
            (asked, first, now())
        });
        assert_eq!(first, second, "one reading per turn");
        assert!(first >= asked, "read when first asked, not when the turn began");
        assert!(now() > second, "outside a turn, the clock itself");
    }

    #[test]
    fn turns_end_also_when_they_panic_and_nest() {
        let outer = turn(|| {
            let outer = now();
            std::thread::sleep(Duration::from_millis(2));
            let inner = turn(now);
            assert!(inner > outer, "a nested turn reads anew");
            assert_eq!(now(), outer, "the outer turn keeps its reading");
            outer
        });
        let _ = std::panic::catch_unwind(|| turn(|| panic!("in a turn")));
        std::thread::sleep(Duration::from_millis(2));
        let after = now();
        assert!(after > outer);
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > after, "no turn is left behind by the panic");
    }
}
