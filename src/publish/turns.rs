//! Publishers take turns on the control thread.
//!
//! Every publisher connection is a task on one thread. A publisher whose socket always has
//! more to read never has to wait, so without a rule it would keep the thread: one flooding
//! a backlog of 100,000 PUBs held everyone else's messages back for more than a second.
//! The rule: a publisher handles a bounded amount of input per turn, then calls
//! [`Turns::yield_turn`].
//!
//! Yielding needs care in monoio: a task that wakes itself while it runs is put at the
//! *front* of the run queue and runs again at once. So a yielding publisher parks its waker
//! here and wakes the pump, a separate task; the pump's wake puts the publisher at the
//! *back* of the queue, behind every task already waiting, and the runtime polls the
//! driver (the other publishers' sockets) before it comes round again.

use std::cell::RefCell;
use std::task::{Poll, Waker};

/// Input one publisher may handle per turn: whichever limit is reached first.
pub const TURN_COMMANDS: usize = 256;
pub const TURN_BYTES: usize = 256 * 1024;

/// Publishers waiting for their next turn, and the pump that gives it to them.
#[derive(Default)]
pub struct Turns {
    parked: RefCell<Vec<Waker>>,
    pump: RefCell<Option<Waker>>,
}

impl Turns {
    /// Ends the calling publisher's turn: returns after the tasks that were ready have run.
    pub async fn yield_turn(&self) {
        let mut parked = false;
        std::future::poll_fn(|cx| {
            if parked {
                return Poll::Ready(());
            }
            parked = true;
            self.parked.borrow_mut().push(cx.waker().clone());
            // No waker means the pump is already woken and will see this one too. (It is
            // spawned before the first publisher is accepted, so it has always run once.)
            if let Some(pump) = self.pump.borrow_mut().take() {
                pump.wake();
            }
            Poll::Pending
        })
        .await
    }

    /// The pump task: wakes every parked publisher, from outside their own polls, so they
    /// queue behind the others. Runs until the process exits.
    pub async fn pump(&self) {
        std::future::poll_fn(|cx| {
            for waker in self.parked.borrow_mut().drain(..) {
                waker.wake();
            }
            *self.pump.borrow_mut() = Some(cx.waker().clone());
            Poll::<()>::Pending
        })
        .await
    }
}
